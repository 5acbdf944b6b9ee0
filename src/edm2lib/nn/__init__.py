"""The U-Net of every ablation config A-G (EDM2 Table 1): layers, switches, preconditioning, presets."""
