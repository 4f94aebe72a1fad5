"""diffgen: trained diffusion models against the exact optimum of their objective.

Public API (each module's docstring gives its formulas):
  diffgen.data.load(config)                         training and held-out sets in [-1, 1]
  diffgen.schedules.get_schedule(config)            the forward process (alphas_bar, a, sigma)
  diffgen.networks.get_network(config.model)        eps_theta as a Flax Linen module
  diffgen.samplers.sample(denoiser, x_T, schedule, method, num_steps, eta, rng)
  diffgen.optimal.optimal_denoiser(train_set, schedule)   the empirical-optimal eps*
  diffgen.neighbors.knn(queries, train_set, k)      exact nearest neighbours
  diffgen.train.train_and_evaluate(config, workdir) training with Orbax checkpoints
"""
