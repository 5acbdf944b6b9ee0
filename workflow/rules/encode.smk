# images.h5 -> latents.h5: SD-VAE posterior mean and std (only for latent models, data.encoder: sd-vae).
# `data.encode_batch` only changes speed: the script reads it from the config, it is no param.


rule encode:
    input:
        images=f"{DATA}/images.h5",
    output:
        latents=f"{DATA}/latents.h5",
    log:
        f"logs/encode/{config['data']['name']}.log",
    benchmark:
        f"benchmarks/encode/{config['data']['name']}.tsv"
    params:
        vae=config["data"]["vae"],
        revision=config["data"]["vae_revision"],
    threads: 2
    resources:
        mem_mb=16000,
        runtime=720,
    conda:
        ENV
    script:
        "../scripts/encode.py"
