"""The report's experiments, one module each, each `run(ctx: diffgen.analysis.Context) ->
diffgen.report.Section`. diffgen.analysis.EXPERIMENTS maps their keys to modules."""
