# A GGUF base model (model.name: a .gguf file, a folder holding one, or pip:PACKAGE) is dequantised once into a
# safetensors model directory; every later stage loads results/model.


rule dequantize:
    input:
        gguf=get_gguf_file,
    output:
        directory("results/model"),
    log:
        "logs/dequantize/dequantize.log",
    benchmark:
        "benchmarks/dequantize/dequantize.tsv"
    conda:
        "../envs/bruno.yaml"
    threads: MODEL_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        # lossless float32 unless model.dtype names another (bfloat16 halves the disk and memory of a large model)
        dtype=(
            "float32"
            if config["model"]["dtype"] == "auto"
            else config["model"]["dtype"]
        ),
    script:
        "../scripts/dequantize.py"
