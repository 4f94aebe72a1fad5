"""What the config files share: parse_arg, the reader of a config file's argument.

A config file takes one string argument after a colon (`--config=configs/digits.py:ARG`), as
in big_vision: comma-separated named values that combine,

    configs/digits.py:smoke                 smoke=True
    configs/digits.py:smoke,num_train=64    smoke=True, num_train=64
    configs/toy2d.py:two_moons              distribution='two_moons' (see parse_arg)
"""
import ml_collections

_TRUE, _FALSE = ('true', '1', 'yes'), ('false', '0', 'no')


def _convert(name, text, default):
    """text as the type of default (bool, int, float or str); ValueError naming the option."""
    kind = type(default)
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f'config argument {name}={text!r} must be true or false')
        return text.lower() in _TRUE
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f'config argument {name}={text!r} must be {kind.__name__}') from None


def parse_arg(arg, **options):
    """The config argument as a ConfigDict of every option, with its default unless arg sets
    it. arg: 'name=value,...' (None or '' for none); a bare `name` sets a bool option to True,
    and an arg that is one bare word naming no option is the value of the first option when
    that option is not a bool. Values take the type of the option's default. An unknown name
    raises ValueError listing the known ones."""
    values = dict(options)
    words = [w.strip() for w in (arg or '').split(',') if w.strip()]
    first = next(iter(options), None)
    if (len(words) == 1 and '=' not in words[0] and words[0] not in options
            and first is not None and not isinstance(options[first], bool)):
        words = [f'{first}={words[0]}']
    for word in words:
        name, has_value, text = word.partition('=')
        name = name.strip()
        if name not in options:
            known = ', '.join(options) or 'none'
            raise ValueError(f'unknown config argument {name!r}; known: {known}')
        if not has_value and not isinstance(options[name], bool):
            raise ValueError(f'config argument {name!r} needs a value: {name}=...')
        values[name] = _convert(name, text.strip(), options[name]) if has_value else True
    return ml_collections.ConfigDict(values)
