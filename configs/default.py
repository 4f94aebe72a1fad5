"""Every config key of diffgen, with its default. Experiment configs import this and override.

Validation (diffgen/validation.py) rejects any key that is not defined here. A default that
derives from another key is a FieldReference (`section.get_ref(key)`), so that overriding that
key, in a config file or with --config.section.key=value, carries over to it.
"""
import ml_collections

# Sections whose keys are names the config chooses, not keys defined here (each entry is
# checked by its layer): diffgen.validation and the check of a workdir's stored config.json
# (diffgen.training.checkpoints.read_stored_config) take any key in them.
NAMED_SECTIONS = ('evaluation.evals',)


def get_config(arg=None):
    del arg
    config = ml_collections.ConfigDict()
    config.seed = 0                         # every random key derives from this by fold_in

    # --- data -------------------------------------------------------------------------
    config.data = data = ml_collections.ConfigDict()
    data.source = 'digits'                  # 'digits' | 'toy2d:<name>' | 'tfds:<name>' | 'npz:<path>'
    data.data_dir = ''                      # TFDS data dir; '' = $DIFFGEN_DATA_DIR or ~/.diffgen/data
    data.num_train = -1                     # training-set size N; -1 = all that remain after held-out
    data.num_heldout = 256                  # held-out images for novelty metrics (0 = none)
    data.train_split = 'train'              # TFDS split the training set comes from
    data.heldout_split = ''                 # TFDS split of the held-out set; '' = carved from train_split
    data.class_balanced = True              # subsets keep the classes balanced where labels exist
    data.random_flip = False                # random horizontal flips during training
    data.center_crop = 0                    # crop images to a centred square of this side (0 = none)
    data.image_size = 0                     # resize images to this side after cropping (0 = as stored)
    data.toy2d_size = 4096                  # points generated for a toy2d source (train + held-out)

    # --- forward process --------------------------------------------------------------
    config.diffusion = diffusion = ml_collections.ConfigDict()
    diffusion.num_timesteps = 1000          # T
    diffusion.schedule = 'linear'           # 'linear' | 'cosine'
    diffusion.beta_start = 1e-4             # linear schedule: beta_1
    diffusion.beta_end = 0.02               # linear schedule: beta_T

    # --- network ----------------------------------------------------------------------
    config.model = model = ml_collections.ConfigDict()
    model.name = 'unet'                     # 'unet' | 'mlp'
    model.ch = 64                           # UNet base channels
    model.ch_mult = (1, 2)                  # UNet channel multiplier per resolution
    model.num_res_blocks = 2                # UNet residual blocks per resolution
    model.attn_resolutions = (4,)           # UNet resolutions with self-attention
    model.dropout = 0.1                     # dropout rate in residual blocks
    model.num_groups = 32                   # GroupNorm groups (capped by the channel count)
    model.norm_eps = 1e-6                   # GroupNorm epsilon
    model.attn_head_dim = 0                 # UNet channels per attention head (0 = one head)
    model.downsample_pad = 'same'           # UNet stride-2 conv padding: 'same' (after) | 'both'
    model.time_offset = 0                   # UNet embeds t + time_offset (diffusers models: -1)
    model.time_freq_shift = 0               # UNet time embedding w_k = 1e4^(-k/(ch/2 - shift))
    model.time_flip = False                 # UNet time embedding as [cos, sin] (not [sin, cos])
    # A diffusers UNet2DModel directory (config.json + diffusion_pytorch_model.safetensors or
    # .bin, e.g. google/ddpm-cifar10-32) whose weights initialise the network; '' = none. It
    # sets the UNet keys above from its config.json, and its scheduler_config.json must
    # match the diffusion section (diffgen/networks/diffusers_import.py).
    model.init_from = ''
    model.mlp_hidden = 256                  # MLP width (toy2d)
    model.mlp_depth = 4                     # MLP hidden layers (toy2d)

    # --- optimiser --------------------------------------------------------------------
    config.optim = optim = ml_collections.ConfigDict()
    optim.learning_rate = 2e-4              # Adam peak learning rate
    optim.warmup_steps = 5000               # linear warm-up steps
    optim.grad_clip = 1.0                   # global-norm gradient clip (0 = none)
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.ema_decay = 0.9999                # EMA of the parameters
    optim.ema_warmup = False                # EMA decay min(ema_decay, (1+t)/(10+t)) at step t

    # --- training ---------------------------------------------------------------------
    config.training = training = ml_collections.ConfigDict()
    training.objective = 'eps'              # 'eps' (L_eps) | 'gap' (docs/math.md §6)
    training.gap_max_k = 100                # gap: s = max(t - k, 0), k ~ U{1..K} (1 = adjacent)
    training.gap_p_zero = 0.0               # gap: probability of s = 0 (an L_eps term)
    training.gap_weighting = 'eps'          # gap: 'eps' |eps - xi/c|^2 | 'xi' |c eps - xi|^2
    training.batch_size = 128               # global batch size
    training.num_steps = 800_000            # total train steps
    training.steps_per_call = 50            # train steps per jitted call (one lax.scan)
    training.unroll = False                 # unroll that scan (CPU: XLA's in-loop conv gradients are slow)
    training.log_every = 500                # steps between metric writes and progress lines
    training.checkpoint_every = 5000        # steps between checkpoints
    training.keep_checkpoints = 3           # checkpoints kept by the CheckpointManager
    training.sample_every = 50_000          # steps between sample grids (0 = only at the end)
    training.keep_period = 0                # also keep every checkpoint whose step is a multiple (0 = none)
    training.loss_bands = 4                 # TensorBoard: the loss in this many equal bands of t (0 = none)
    training.profile_steps = 0              # jax.profiler trace of this many steps after the first call (0 = none)
    training.compute_dtype = 'float32'      # 'float32' | 'bfloat16' (activations; params, optimiser: float32)
    # persistent XLA compilation cache: 'auto' = <data dir>/jax_compilation_cache, '' = none
    training.compile_cache_dir = 'auto'

    # --- sampling ---------------------------------------------------------------------
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = 'ddpm'                # 'ddpm' | 'ddim' | 'heun'
    sampling.num_steps = 0                  # sampler steps; 0 = all T (ddpm/ddim) or 50 (heun)
    sampling.eta = 0.0                      # DDIM eta (0 = deterministic)
    sampling.num_samples = 64               # samples drawn by --mode=sample and at the end of training
    sampling.batch_size = 256               # samples per jitted sampler call
    sampling.use_ema = True                 # sample with the EMA parameters

    # --- evaluation during training (diffgen/analysis/evaluation.py) -----------------------
    config.evaluation = evaluation = ml_collections.ConfigDict()
    evaluation.num_samples = 128            # samples from one fixed x_T at every evaluation
    evaluation.num_images = 256             # training and held-out images of the denoising loss
    # named evaluators, each {'type': ..., 'every': steps (0 = off), the type's options}:
    #   memorisation (method, sampler_steps): memorisation_ratio, exact_copy_rate, novelty_ratio
    #   fd (method, sampler_steps): Fréchet distance in classifier features
    #   loss (t_strata = 8, eps_per_image = 4: a stratified grid of t, ε draws per image and t):
    #     train, heldout, gap and its 95% paired t-interval gap_low, gap_high over the images
    # e.g. evals.ddim = {'type': 'memorisation', 'method': 'ddim', 'sampler_steps': 50, 'every': 500}
    evaluation.evals = ml_collections.ConfigDict()

    # --- empirical-optimal denoiser ---------------------------------------------------
    config.optimal = optimal = ml_collections.ConfigDict()
    optimal.chunk_size = 0                  # training images per online-softmax chunk (0: the
                                            # device kind's best, chunked.DEFAULT_CHUNK_SIZES)
    optimal.storage_dtype = 'float32'       # 'float32' | 'bfloat16' storage of the training set

    # --- analysis (--mode=analyze): the generalisation report ---------------------------
    config.analysis = analysis = ml_collections.ConfigDict()
    analysis.experiments = ('e1', 'e2', 'e3', 'e4', 'e5')  # which experiments the report runs
    analysis.plugins = ()                   # modules to import that register further experiments
    analysis.num_samples = 256              # samples per sampler / model in the experiments
    analysis.batch_size = 256               # samples per jitted sampler call: all at once, so
                                            # each eps* pass over the set serves every query
    analysis.sampler_steps = 100            # DDIM / Heun steps in the experiments (DDPM: all T)
    # memorisation criteria (diffgen/analysis/copies.py): besides d_1/d_2 < 1/3, the distance
    # criterion d_1 < delta, delta = this quantile of the whole source's own nearest-neighbour
    # distances (the same at every N); calibrated on noisy copies at these RMS noise levels
    analysis.copy_quantile = 0.05
    analysis.copy_noise_levels = (0.05, 0.1, 0.2)
    # sample quality (E1, E2, E4; diffgen/analysis/quality.py): features of a classifier of the
    # training set
    analysis.quality = quality = ml_collections.ConfigDict()
    quality.classifier_steps = 2000         # its Adam steps (batch 128); cached in the data dir
    quality.k = 3                           # k of the k-NN manifolds of precision / recall
    # Each experiment's own settings, under its key (diffgen/analysis/experiments/).
    # e4 (hybrid sampling): eps* above t_switch and the network below, and the reverse order
    analysis.e4 = e4 = ml_collections.ConfigDict()
    e4.switch_fractions = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3, 1.0)  # t_switch / T
    # e5 (reproducibility): models on the disjoint halves of the training set, a seed control
    analysis.e5 = e5 = ml_collections.ConfigDict()
    # steps of each of its four models; `* 1` makes a derived reference, so that setting this
    # key leaves training.num_steps alone
    e5.num_steps = training.get_ref('num_steps') * 1
    # e6 (EMM): the run's own memorisation ratio, plus a launch/sweep.py sweep over N
    analysis.e6 = e6 = ml_collections.ConfigDict()
    e6.sweep_dir = ''                       # sweep dir whose results.csv E6 reports ('' = none)
    e6.threshold = 0.9                      # EMM = the largest N with memorisation ratio >= this
    # e8 (which theory explains the network): samples of the network and of reference
    # denoisers from the same x_T (diffgen/analysis/theories.py), compared by r²
    analysis.e8 = e8 = ml_collections.ConfigDict()
    e8.references = ('optimum', 'gaussian', 'ls', 'els')   # theories.NAMES
    e8.method = 'ddim'                      # the sampler of every sample
    e8.sampler_steps = 50                   # its steps (DDPM: all T; 0 = analysis.sampler_steps)
    e8.num_samples = 128                    # samples per denoiser (0 = analysis.num_samples)
    e8.patch_sizes = (1, 3, 5, 7, 9, 11, 13, 15)  # candidates of the patch machines' P(t) (odd)
    e8.calibration_times = 10               # t calibrated, log-spaced in [1, T]
    e8.calibration_images = 128             # training images of the calibration's points
    # e7 (mutual information, toy2d): K models on K training sets S_k ~ P^N, trained with vmap
    analysis.e7 = e7 = ml_collections.ConfigDict()
    e7.num_sets = 16                        # K training sets (seeds_per_set models each)
    e7.num_train = 32                       # N points per training set
    e7.num_samples = 512                    # M samples per model
    e7.train_steps = (200, 1000, 3000)      # estimate I(z; S) after these steps (x steps_per_call)
    e7.knn_k = 3                            # k of the Kozachenko-Leonenko estimator
    e7.seeds_per_set = 2                    # R models (seeds) per set: Q(z|S) marginalises the seed
    e7.validation_num_sets = 64             # K of the validation cases (they also run at num_sets)
    e7.validation_seed_share = 0.25         # Gaussian case: b²/(s² + b²), its seed-dependent noise
    e7.validation_atomic_widths = (0.1, 0.2, 0.5)  # h of the atomic case (1/N) Σ_i N(y_i, h² I)
    return config
