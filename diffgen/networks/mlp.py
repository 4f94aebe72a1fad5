"""An MLP eps_theta(x, t) for low-dimensional (toy2d) data."""
import flax.linen as nn

from diffgen.networks.registry import NETWORKS
from diffgen.networks.unet import timestep_embedding


class MLP(nn.Module):
    """eps_theta(x, t) = MLP([x, emb(t)]) with residual swish layers, for x of shape (B, D)."""
    hidden: int = 256
    depth: int = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, t, train=False):
        temb = nn.Dense(self.hidden)(timestep_embedding(t, self.hidden))
        h = nn.Dense(self.hidden)(x) + temb
        for _ in range(self.depth):
            u = nn.Dense(self.hidden)(nn.swish(nn.LayerNorm()(h)))
            u = nn.Dropout(self.dropout, deterministic=not train)(u)
            h = h + nn.Dense(self.hidden)(nn.swish(u + temb))
        return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(nn.swish(h))


@NETWORKS.register('mlp')
def build_mlp(model_config):
    """MLP from config.model: mlp_hidden, mlp_depth, dropout."""
    m = model_config
    return MLP(hidden=m.mlp_hidden, depth=m.mlp_depth, dropout=m.dropout)
