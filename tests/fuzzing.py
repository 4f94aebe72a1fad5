"""What the seeded fuzzing tests share (tests/test_import_fuzz.py, tests/test_faults_fuzz.py)."""


def mutate_object(node, rng, values, extra_keys):
    """One random change of the JSON object node, in place: a key's value replaced by one of
    values (twice as likely), a key dropped, or a key of extra_keys added with one of values.
    Draws from rng in that order: the kind, then the key, then the value."""
    kind = rng.choice(['replace', 'replace', 'drop', 'add'])
    keys = sorted(node)
    if kind == 'replace' and keys:
        node[keys[rng.integers(len(keys))]] = values[rng.integers(len(values))]
    elif kind == 'drop' and keys:
        del node[keys[rng.integers(len(keys))]]
    else:
        node[extra_keys[rng.integers(len(extra_keys))]] = values[rng.integers(len(values))]
