"""launch/sweep.py --seeds: replicates of every run, each its own config.seed, seed by seed."""
from launch import sweep


def test_replicates_go_seed_by_seed_with_their_own_seed():
    runs = sweep.replicate([{'data.num_train': 16}, {'data.num_train': 64}], 3, 5)
    assert [name for name, _ in runs] == [
        'num_train_16_seed_5', 'num_train_64_seed_5', 'num_train_16_seed_6',
        'num_train_64_seed_6', 'num_train_16_seed_7', 'num_train_64_seed_7']
    assert [o['seed'] for _, o in runs] == [5, 5, 6, 6, 7, 7]
    config = sweep.run_config('configs/digits.py', runs[2][1], [])
    assert config.seed == 6 and config.data.num_train == 16
    # --seeds=1 is the first replicate, in the same workdir; no --seeds, one unsuffixed run
    assert sweep.replicate([{'data.num_train': 16}], 1, 5) == [
        ('num_train_16_seed_5', {'data.num_train': 16, 'seed': 5})]
    assert sweep.replicate([{'data.num_train': 16}], None, 5) == [
        ('num_train_16', {'data.num_train': 16})]
