"""The upper bound of every count, size, step and rate key of the training config (`textinv.config`) that has no
bound of its own there, each with the reason the error message gives. Past its bound a value is a slip of the
keyboard, and some are allocated or computed up front (`log.val_samples: 100000`, unbounded, computed for minutes
before a step). Also the seed, learning-rate and batch bounds that `validate` checks with messages of their own."""

from __future__ import annotations

MAX_SEED = 2**32 - 1  # the paper code's seed_everything (Lightning) takes 32-bit seeds; so does numpy
MAX_LEARNING_RATE = 1.0  # the paper's rate is 5e-3; above 1 the vectors leave the embedding space in a step
MAX_MEMORY_GIB = 4096  # train.max_memory, in GiB: more than any one machine holds
MAX_BATCH_AT_512 = 64  # images per micro-batch at 512 px; larger batches go through gradient accumulation


def max_batch_size(resolution: int) -> int:
    """The largest micro-batch worth trying: 64 at 512 px and below, fewer as the pixels per image grow."""
    return max(1, min(MAX_BATCH_AT_512, int(MAX_BATCH_AT_512 * (512 / resolution) ** 2)))


MAX_STEPS = 1_000_000  # 200 times the paper's 5000 steps: weeks of training even at 1 step per second
# key -> (the largest value, why)
UPPER_BOUNDS: dict[str, tuple[float, str]] = {
    "data.resolution": (2048, "twice SDXL's 1024 px"),
    "data.repeats": (1000, "an epoch's order, images x repeats, is kept in every resumable state"),
    "log.num_images": (64, "an image log is drawn in one batch"),
    "log.sample_steps": (1000, "the schedulers have 1000 timesteps"),
    "log.val_samples": (256, "every validation-loss check runs a forward pass per sample; 8 show the trend"),
    "train.max_steps": (MAX_STEPS, "200 times the paper's 5000 steps"),
    "train.early_stop": (1000, "it counts validation-loss checks without improvement"),
    "optim.lr_warmup_steps": (MAX_STEPS, "at most train.max_steps can run"),
    "optim.gradient_accumulation_steps": (1024, "each optimizer step draws this many micro-batches"),
    "optim.weight_decay": (1.0, "AdamW's decoupled decay, 0.01 by default; over 1 it pulls the vectors to 0"),
    "optim.adam_epsilon": (1.0, "it guards AdamW's division (1e-8); at 1 it drowns the gradient's scale"),
    "optim.max_grad_norm": (1000.0, "0 turns clipping off"),
    "log.save_every": (MAX_STEPS, "at most train.max_steps can run; 0 turns it off"),
    "log.image_every": (MAX_STEPS, "at most train.max_steps can run; 0 turns it off"),
    "log.val_loss_every": (MAX_STEPS, "at most train.max_steps can run; 0 turns it off"),
    "log.eval_every": (MAX_STEPS, "at most train.max_steps can run; 0 turns it off"),
    # issue 21's levers (bench/levers.py: on the toy model a weight of 1 already leaves only the init word)
    "optim.embedding_reg_weight": (100.0, "a pull toward the init word; at 1 the toy concept is already gone"),
    "optim.max_drift": (100.0, "vocabulary median norms from the init vector; 0.3-0.7 measured on the toy model"),
    "optim.norm_cap": (100.0, "vocabulary median norms; a cap that high caps nothing"),
    "optim.edit_anchor_weight": (100.0, "the edit anchor's share of the loss; 1 on the toy model, 3 already over-pulls"),
    "optim.min_snr_gamma": (1000.0, "the SNR cap of Min-SNR weighting; 5 in invoke-training and the paper"),
    # AUTOMATIC1111's CFG Scale slider ends at 30 (stable-diffusion-webui modules/ui.py, gr.Slider maximum=30.0)
    "log.guidance_scale": (30.0, "AUTOMATIC1111's CFG slider ends there"),
    # Flux.1-dev samples at 3.5 (FluxPipeline's default); its guidance embedder was distilled on a few units
    "train.flux_guidance": (30.0, "Flux.1-dev samples at 3.5"),
}
