#!/usr/bin/env python
"""Train a continuous-time DDIM on any image dataset.

    accelerate launch train_ddim.py [--config configs/digits.yaml] [--key value ...]
    python train_ddim.py --config configs/digits.yaml   # the built-in digits, the measured best recipe
    python train_ddim.py            # no config: the Keras DDIM example's recipe on the digits

Every option: `python train_ddim.py --help`. The logic lives in `denoising_diffusion.training`.
"""

from denoising_diffusion.training import main

if __name__ == "__main__":
    main()
