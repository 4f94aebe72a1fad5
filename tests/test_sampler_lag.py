"""studies/sampler_lag.py: the hand-over at exactly t_s, the forward distance against a NumPy
brute force, the split of path measures by endpoint, and the analysed step in study.json."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from configs import toy2d
from diffgen.analysis import provenance
from diffgen.diffusion import samplers
from diffgen.diffusion.schedules import get_schedule
from diffgen.optimum import chunked
from studies import sampler_lag as lag


def _schedule(num_timesteps):
    config = toy2d.get_config()
    config.diffusion.num_timesteps = num_timesteps
    return get_schedule(config)


def _denoiser(x, t):
    """A fixed nonlinear function of (x, t), so that a step at the wrong t shows."""
    return jnp.tanh(x) * (t[:, None] / 8.0) + 0.1 * jnp.sin(3 * x)


def test_handover_pairs_start_at_exactly_t_s():
    """DDIM-100 on T = 1000: t_s = 500 is not on the grid (its points around it are 490 and
    504), so the hand-over adds it: (500, 490), then the grid's own steps from 490 down."""
    grid_pairs = np.asarray(samplers.step_pairs(1000, 100))
    pairs = np.asarray(lag.handover_pairs(1000, 100, 500))
    assert tuple(pairs[0]) == (500, 490)
    np.testing.assert_array_equal(pairs[1:], grid_pairs[grid_pairs[:, 0] <= 490])
    assert pairs[-1, 1] == 0 and np.all(pairs[:-1, 1] == pairs[1:, 0])
    np.testing.assert_array_equal(lag.handover_pairs(1000, 100, 490),
                                  grid_pairs[grid_pairs[:, 0] <= 490])   # on the grid: as is
    np.testing.assert_array_equal(lag.handover_pairs(1000, 100, 1000), grid_pairs)
    assert lag.handover_pairs(1000, 100, 0).shape == (0, 2)


def test_the_lag_studys_handover_is_at_exactly_t_s():
    """switch_sample equals, step by step in Python: DDPM from T = 8 down to x_{t_s}, then
    DDIM steps 6 -> 4 -> 1 -> 0 (t_s = 6 added to the 3-step grid 0, 1, 4, 8), so the state
    DDPM hands over at t_s is denoised at t_s; the old hand-over (DDIM from the first grid
    point below t_s, 4, on x_6) gives another sample."""
    schedule = _schedule(8)
    assert samplers.timestep_grid(8, 3).tolist() == [0, 1, 4, 8]
    x_T = jax.random.normal(jax.random.key(0), (6, 2))
    rng = jax.random.key(1)
    ddim = lambda x, steps: functools.reduce(lambda x, s: samplers.ddim_step(
        x, _denoiser(x, jnp.full((6,), s[0])), t=s[0], t_next=s[1], schedule=schedule),
        steps, x)
    x = x_T
    for t in (8, 7):
        x = samplers.ddpm_step(x, _denoiser(x, jnp.full((6,), t)), t=t, schedule=schedule,
                               rng=rng)
    out = lag.switch_sample(jax.tree_util.Partial(_denoiser), x_T, schedule, rng, 6,
                            lag.handover_pairs(8, 3, 6))
    np.testing.assert_allclose(out, ddim(x, ((6, 4), (4, 1), (1, 0))), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, ddim(x, ((4, 1), (1, 0))), atol=1e-3)


def test_forward_distance_against_brute_force():
    """ν(x_t, t) = min_i ‖x_t − a_t y_i‖ / (σ_t √D) against float64 NumPy, on states near the
    forward process and off it; forward-process states from their own image have ν ≤ ‖ε‖/√D."""
    schedule = _schedule(100)
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (5, 4, 4, 1)).astype(np.float32)
    rows = chunked.prepare_rows(train, None, jnp.float32)
    ts = np.array([1, 10, 50, 100])
    a, sigma = (np.asarray(v, np.float64)[ts] for v in (schedule.a, schedule.sigma))
    states = rng.standard_normal((4, 3, 4, 4, 1)).astype(np.float32)
    nu = lag.forward_distance(states, ts, rows, schedule)
    flat, y = states.reshape(4, 3, 1, 16).astype(np.float64), train.reshape(1, 1, 5, 16)
    brute = np.min(np.linalg.norm(flat - a[:, None, None, None] * y, axis=-1), axis=-1) / (
        sigma[:, None] * 4.0)
    np.testing.assert_allclose(nu, brute, rtol=1e-3)

    eps = rng.standard_normal((4, 3, 16))
    own = rng.integers(0, 5, (4, 3))
    forward = (a[:, None, None] * train.reshape(5, 16)[own]
               + sigma[:, None, None] * eps).reshape(4, 3, 4, 4, 1).astype(np.float32)
    nu = lag.forward_distance(forward, ts, rows, schedule)
    assert np.all(nu <= np.linalg.norm(eps, axis=-1) / 4.0 * (1 + 1e-3))
    np.testing.assert_allclose(nu[0], np.linalg.norm(eps[0], axis=-1) / 4.0, rtol=1e-3)  # t = 1


def test_path_measures_split_by_endpoint():
    """Per band of t: the mean over all samples, over those whose endpoint copies and over the
    others, as hand-computed; a band with no visited t (or an empty group) is None."""
    ts = np.array([5, 30, 700])
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])   # (t, sample)
    copies = np.array([True, False, True])
    split = lag.split_by_endpoint(ts, values, copies)
    assert split['all'] == [2.0, 5.0, None, None, None, 8.0]
    assert split['copies'] == [2.0, 5.0, None, None, None, 8.0]      # (1 + 3)/2, ...
    assert split['novel'] == [2.0, 5.0, None, None, None, 8.0]       # sample 1 alone
    copies = np.array([True, True, False])
    split = lag.split_by_endpoint(ts, values, copies)
    assert split['copies'] == [1.5, 4.5, None, None, None, 7.5]
    assert split['novel'] == [3.0, 6.0, None, None, None, 9.0]
    assert lag.split_by_endpoint(ts, values, np.ones(3, bool))['novel'] == [None] * 6
    assert lag.banded(ts, values, np.median)[5] == 8.0


def test_study_json_records_the_analysed_step(tmp_path, monkeypatch):
    """run_study analyses the last of the given steps (parts 2 and 3) and says so in
    study.json: the steps, analysed_step and the hand-over's DDIM grid, with the analysed
    checkpoint's provenance (as a report section's), the training-set size and the commit."""
    restored = []

    class FakeRun:
        schedule = _schedule(20)
        dataset = type('Data', (), {'train': np.zeros((4, 2), np.float32),
                                    'train_images': np.zeros((4, 2), np.float32)})()

    class FakeInputs:
        def __init__(self, config, run):
            self.x_T, self.train_rows, self.sample_rng = np.zeros((3, 2)), None, None

    monkeypatch.setattr(lag, 'restore_trained',
                        lambda config, workdir, step=None: restored.append(step) or FakeRun())
    monkeypatch.setattr(lag, 'EvaluationInputs', FakeInputs)
    monkeypatch.setattr(lag.checkpoints, 'finished_steps', lambda workdir: [1000, 2000, 3000])
    config = toy2d.get_config()
    result = lag.run_study(config, str(tmp_path), [1000, 3000], parts=(), out=str(tmp_path))
    stored = json.load(open(tmp_path / 'study.json'))
    assert stored['analysed_step'] == result['analysed_step'] == 3000
    assert stored['provenance'] == {**provenance.provenance(config, 3000, FakeRun.dataset.train_images),
                                    'machine': stored['provenance']['machine']}
    assert stored['num_train'] == 4 and stored['commit']
    assert stored['steps'] == [1000, 3000] and restored == [None, 3000]
    assert lag.run_study(config, str(tmp_path), None, parts=(), out=str(tmp_path))[
        'analysed_step'] == 3000   # default: every kept step, the last analysed


def test_config_defaults_to_the_runs_own(tmp_path):
    """Without --config the study reads <workdir>/config.json (the run's exact config, sweep
    overrides included), with evaluation.num_samples set to --num_samples."""
    config = toy2d.get_config()
    config.seed, config.data.num_train = 3, 77
    (tmp_path / 'config.json').write_text(json.dumps(config.to_dict()))
    loaded = lag.load_config('', str(tmp_path), 7)
    assert (loaded.seed, loaded.data.num_train, loaded.evaluation.num_samples) == (3, 77, 7)
    assert loaded.analysis.e7.train_steps == config.analysis.e7.train_steps   # tuples back
    assert lag.load_config('configs/toy2d.py', str(tmp_path), 5).seed == 0
