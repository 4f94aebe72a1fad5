"""A toy experiment plugin (diffgen.analysis.experiment), for tests/test_plugins.py: named in
a config as --config.analysis.plugins="('tests.toy_experiment',)", listed as 'toy'."""
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.report import Section, markdown_table

KEY, TITLE = 'toy', 'Toy: the sizes the report works with'


def measure(ctx, cfg):
    """N, the number of samples, and the mean pixel of the training set."""
    del cfg  # no settings
    return {'num_train': int(ctx.train_rows.num_rows), 'num_samples': len(ctx.x_T),
            'train_mean': float(ctx.dataset.train.mean())}


def render(numbers, ctx):
    table = markdown_table(['quantity', 'value'],
                           [['training images N', numbers['num_train']],
                            ['samples', numbers['num_samples']],
                            ['mean training pixel', f'{numbers["train_mean"]:.4f}']])
    return Section(KEY, TITLE, f'{ctx.config.data.source}:\n\n{table}', numbers)


register(Experiment(KEY, TITLE, measure, render))
