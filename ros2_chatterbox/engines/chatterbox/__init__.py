"""Chatterbox Turbo (and Chatterbox-Nano), in small modules:

    models.py           turbo | nano: hub repository, T3 file, GPT-2 config; builds Nano's T3 with chatterbox 0.1.7
    checkpoint.py       the checkpoint's files, checks, loading and its errors, hub download
    weights.py          reading safetensors into a module: one tensor at a time, no file mapping, no random init
    device.py           device and dtype, the allocator check, Jetson patches, giving memory back
    voice_cache.py      reference recordings -> conditioning, one bounded LRU cache
    s3_tokenizer.py     the S3 tokenizer, read from the checkpoint only while a new voice is conditioned
    tokens.py           speech-token sources (upstream's loop, the fast path)
    s3gen_stream.py     streaming S3Gen decoder (flow + HiFT, seamless joins, watermark)
    s3gen_static.py     the flow at static shapes (token buckets, masked padding): groundwork for its CUDA graphs
    s3gen_precision.py  S3Gen's flow in float16: what stays float32, the tolerance against float32
    footprint.py        where the memory is: weights per part and dtype, device pools, host libraries and heap
    fast_path.py        choosing T3's decode loop: fast_t3 after its three self-checks, or upstream's (a warning)
    memory_plan.py      the working memory the longest allowed piece needs (pure arithmetic, no torch)
    memory_warmup.py    taking that memory at configure (one worst-case pass) and reporting it
    gpu_memory.py       allocator counters, host + device memory reports, the host thread's GPU wait mode
    engine.py           ChatterboxTurboEngine: load / unload / synthesize / voices / info
    tiny_checkpoint.py  a tiny random checkpoint in the real layout (tests, CPU smoke runs)
"""
