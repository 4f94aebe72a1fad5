"""The samplers take exactly the number of steps asked for (issue: 100 requested used to
run 98): with T = 1000 and 100 steps, DDIM evaluates the denoiser at 100 distinct t and Heun
at the same 100 t (2·100 − 1 evaluations), the t of samplers.timestep_grid."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen.diffusion import samplers
from diffgen.diffusion.schedules import make_schedule


@pytest.mark.parametrize('method,calls', [('ddim', 100), ('heun', 199)])
def test_a_100_step_sampler_evaluates_100_timesteps(method, calls):
    seen = []

    def recording(x, t):
        jax.debug.callback(lambda t: seen.append(int(np.asarray(t).reshape(-1)[0])), t)
        return jnp.zeros_like(x)

    samplers.sample(recording, jnp.zeros((2, 3)), make_schedule('linear', 1000), method,
                    num_steps=100)
    jax.effects_barrier()   # every debug callback has run
    assert len(seen) == calls
    assert sorted(set(seen)) == samplers.timestep_grid(1000, 100)[1:].tolist()
