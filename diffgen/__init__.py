"""diffgen: trained diffusion models against the exact optimum of their objective.

Public API (each module's docstring gives its formulas):
  diffgen.data.load(config)                              training and held-out sets in [-1, 1]
  diffgen.diffusion.schedules.get_schedule(config)       the forward process (alphas_bar, a, sigma)
  diffgen.networks.get_network(config.model)             eps_theta as a Flax Linen module
  diffgen.diffusion.samplers.sample(denoiser, x_T, schedule, method, num_steps, eta, rng)
  diffgen.diffusion.denoisers.network_denoiser(model, params)   eps_theta as a sampler's denoiser
  diffgen.optimum.optimal.optimal_denoiser(train_set, schedule)  the empirical-optimal eps*
  diffgen.optimum.neighbors.knn(queries, train_set, k)   exact nearest neighbours
  diffgen.training.loop.train_and_evaluate(config, workdir)      training with Orbax checkpoints
  diffgen.analysis.experiment.register(Experiment(...))  a further section of the report

The package is layered: a module imports only from its own layer and the layers before it
in LAYERS (lowest first; a layer is a module or subpackage directly under diffgen/).
tests/test_layers.py checks this from the source. This file imports only xla_options (which
imports os), so reading LAYERS costs nothing; importing diffgen sets diffgen's XLA options
before JAX starts (xla_options.apply).
"""
from diffgen import xla_options

xla_options.apply()

LAYERS = (
    'xla_options', # XLA_FLAGS set before JAX starts (XLA:CPU's kernel choice)
    'errors',      # the exception types: ConfigError, DataError, WorkdirError, ...
    'registry',    # Registry: names in configs -> the code they select
    'files',       # run outputs read and written, local or gs:// (etils.epath)
    'rng',         # named random streams, fold_in of the config seed
    'progress',    # progress lines and ETA formatting
    'figures',     # every picture drawn (matplotlib, imported on first use)
    'parallel',    # the device mesh, sharding, multi-process start-up
    'diffusion',   # schedules, conversions, samplers, objectives, denoisers
    'networks',    # eps_theta: UNet, MLP
    'optimum',     # the chunked online-softmax core: eps*, kNN, the gap bank
    'data',        # data sources and the training / held-out sets
    'training',    # train state, step, loop, checkpoints, ensembles
    'analysis',    # the generalisation report: context, experiments, metrics, quality
    'validation',  # the config checked before any work starts
    'modes',       # train / sample / analyze / all / compare
    'docs',        # docs/results.md made from the runs' reports and evaluations
    'main',        # the command line
)
