#!/usr/bin/env python
"""Train a continuous-time DDIM on any image dataset.

    accelerate launch train_ddim.py [--config configs/digits.yaml] [--key value ...]
    python train_ddim.py            # the built-in default: scikit-learn's digits

Every option: `python train_ddim.py --help`. The logic lives in `denoising_diffusion.training`.
"""

from denoising_diffusion.training import main

if __name__ == "__main__":
    main()
