"""The config files: big_vision-style arguments that combine (configs/common.parse_arg), and
defaults that follow the key they derive from (FieldReference)."""
import pytest

from configs import cifar10, common, digits, digits_gap, toy2d


def test_parse_arg_types_defaults_and_bare_words():
    parsed = common.parse_arg('smoke,num_train=64,rate=0.5', smoke=False, num_train=-1,
                              rate=1.0, name='a')
    assert parsed.to_dict() == {'smoke': True, 'num_train': 64, 'rate': 0.5, 'name': 'a'}
    assert common.parse_arg(None, smoke=False).smoke is False
    assert common.parse_arg('smoke=false', smoke=True).smoke is False
    # One bare word naming no option is the first option's value (when that is not a bool).
    assert common.parse_arg('rings', name='gmm8', smoke=False).name == 'rings'


@pytest.mark.parametrize('arg,message', [
    ('huge', "unknown config argument 'huge'; known: smoke, num_train"),
    ('smoke,size=3', "unknown config argument 'size'; known: smoke, num_train"),
    ('num_train=many', "num_train='many' must be int"),
    ('smoke=maybe', "smoke='maybe' must be true or false"),
    ('num_train', "'num_train' needs a value"),
])
def test_parse_arg_errors_name_the_problem(arg, message):
    with pytest.raises(ValueError, match=message):
        common.parse_arg(arg, smoke=False, num_train=-1)


def test_variants_combine():
    smoke = digits.get_config('smoke')
    both = digits.get_config('smoke,num_train=64')
    assert both.data.num_train == 64 and digits.get_config().data.num_train == -1
    assert both.training.num_steps == smoke.training.num_steps == 600
    assert digits.get_config('num_train=64').training.num_steps == 5000
    gap = digits_gap.get_config('smoke,num_train=64')
    assert gap.training.objective == 'gap' and gap.data.num_train == 64
    assert toy2d.get_config('two_moons').data.source == 'toy2d:two_moons'
    assert toy2d.get_config('distribution=two_moons').data.source == 'toy2d:two_moons'
    with pytest.raises(ValueError, match="unknown config argument 'smoke'; known: none"):
        cifar10.get_config('smoke')


def test_e5_steps_follow_the_training_length():
    config = digits.get_config()
    assert config.analysis.e5.num_steps == 5000      # the run's full length (issue 10)
    assert digits.get_config('smoke').analysis.e5.num_steps == 600
    config.training.num_steps = 750                  # an override carries over
    assert config.analysis.e5.num_steps == 750
    config.analysis.e5.num_steps = 7                 # unless the key itself is set
    assert config.analysis.e5.num_steps == 7 and config.training.num_steps == 750
