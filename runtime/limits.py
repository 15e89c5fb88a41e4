"""The bounds every input is held to (images, calls, what a replayed image may ask for): one place,
imported by the CLI's option declarations without loading anything else."""

MAX_PIXELS = 4096 * 4096  # an input's pixels (raise with --max-pixels / pipe.max_pixels: memory grows with it)
MAX_SIDE = 16384  # pixels on a side of any image edgesd makes
MAX_STEPS = 1000  # diffusers' schedulers train on 1000 timesteps
MAX_GUIDANCE = 100.0  # far past any useful scale (7.5 typical, 30 extreme); beyond, images saturate or overflow
MAX_IMAGES = 64  # images per call (a batch)
MAX_THREADS = 256  # CPU threads asked of an engine (each costs a stack and an arena; 100000 exhausted memory)
