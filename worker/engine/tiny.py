"""A tiny, randomly initialised CSM checkpoint for tests and offline development.

The checkpoint has the same layout as ``sesame/csm-1b`` (model, generation config, byte-level
tokenizer, Mimi feature extractor, chat template), so it loads through exactly the same code
path: ``CsmForConditionalGeneration.from_pretrained(dir)`` and
``AutoProcessor.from_pretrained(dir)``. Only the sizes differ: hidden 32, one layer,
4 codebooks, a codec codebook of 64 entries; weights drawn with std 0.2 (not transformers'
0.02), so that the context and the text visibly change the generated codes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CsmConfig,
    CsmDepthDecoderConfig,
    CsmForConditionalGeneration,
    CsmProcessor,
    EncodecFeatureExtractor,
    GenerationConfig,
    MimiConfig,
    PreTrainedTokenizerFast,
)

from worker.engine.hf import quiet_progress_bars

#: Name of the marker file that tells the engine a folder holds this test model.
TINY_MARKER = "parley_tiny.json"

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_EOS_TOKEN = "<|audio_eos|>"

NUM_CODEBOOKS = 4
CODEBOOK_SIZE = 64  # Mimi codebook entries; the CSM audio vocab adds 3 (eos is 0, pad is the last)
HIDDEN = 32
INIT_STD = 0.2  # large enough that context and text visibly steer the codes

# csm-1b's chat template (from transformers' convert_csm.py): roles are speaker ids, every
# message but the last carries exactly one text and one audio item, the text comes first.
CHAT_TEMPLATE = """
{%- for message in messages %}
    {%- if not message['role'] is string or not message['role'].isdigit() %}
        {{- raise_exception("The role must be an integer or a stringified integer (e.g. '0') \
designating the speaker id") }}
    {%- endif %}
    {%- set content = message['content'] %}
    {%- if content is not iterable or content is string %}
        {{- raise_exception("The content must be a list") }}
    {%- endif %}
    {%- set content_types = content | map(attribute='type') | list %}
    {%- if loop.last %}
        {%- if 'text' not in content_types %}
            {{- raise_exception("The last message must include one item of type 'text'") }}
        {%- elif (content_types | select('equalto', 'text') | list | length > 1)
              or (content_types | select('equalto', 'audio') | list | length > 1) %}
            {{- raise_exception("At most two items are allowed in the last message: \
one 'text' and one 'audio'") }}
        {%- endif %}
    {%- else %}
        {%- if content_types | select('equalto', 'text') | list | length != 1
              or content_types | select('equalto', 'audio') | list | length != 1 %}
            {{- raise_exception("Each message (except the last) must contain exactly one 'text' \
and one 'audio' item") }}
        {%- elif content_types | reject('in', ['text', 'audio']) | list | length > 0 %}
            {{- raise_exception("Only 'text' and 'audio' types are allowed in content") }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {{- bos_token }}
    {{- '[' + message['role'] + ']' }}
    {{- message['content'][0]['text'] }}
    {{- eos_token }}
    {%- if message['content']|length > 1 %}
        {{- '<|AUDIO|><|audio_eos|>' }}
    {%- endif %}
{%- endfor %}
"""


def _build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges: one token per UTF-8 byte, plus CSM's specials."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: idx for idx, char in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    specials = [BOS_TOKEN, EOS_TOKEN, AUDIO_TOKEN, AUDIO_EOS_TOKEN]
    backend.add_special_tokens(specials)  # ids 256..259, in this order
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,  # as csm-1b: pad = eos
        model_max_length=2048,
    )


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        raise TypeError(f"token {token!r} has no single id")
    return token_id


def _build_config(tokenizer: PreTrainedTokenizerFast) -> CsmConfig:
    audio_vocab = CODEBOOK_SIZE + 3
    audio_token_id = _token_id(tokenizer, AUDIO_TOKEN)
    codec = MimiConfig(
        hidden_size=HIDDEN,
        num_filters=4,
        # upsampling_ratios, kernels and num_residual_layers stay at their defaults: the
        # processor computes the number of <|AUDIO|> placeholders from those hard-coded values.
        codebook_size=CODEBOOK_SIZE,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        num_quantizers=NUM_CODEBOOKS,
        num_semantic_quantizers=1,
        upsample_groups=HIDDEN,
        num_hidden_layers=1,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
    )
    depth = CsmDepthDecoderConfig(
        num_codebooks=NUM_CODEBOOKS,
        backbone_hidden_size=HIDDEN,
        vocab_size=audio_vocab,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=NUM_CODEBOOKS + 1,
        initializer_range=INIT_STD,
    )
    return CsmConfig(
        num_codebooks=NUM_CODEBOOKS,
        vocab_size=audio_vocab,
        text_vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,  # same position budget as csm-1b
        initializer_range=INIT_STD,
        pad_token_id=audio_token_id,  # as csm-1b: pad_token_id == audio_token_id
        bos_token_id=tokenizer.bos_token_id,
        audio_token_id=audio_token_id,
        audio_eos_token_id=_token_id(tokenizer, AUDIO_EOS_TOKEN),
        codebook_pad_token_id=audio_vocab - 1,
        codebook_eos_token_id=0,
        depth_decoder_config=depth,
        codec_config=codec,
    )


def _randomise_codebooks(model: CsmForConditionalGeneration) -> None:
    """Give Mimi's codebooks random centroids (they initialise to zeros: every code would be 0)."""
    with torch.no_grad():
        for name, buffer in model.codec_model.named_buffers():
            if name.endswith("codebook.embed_sum"):
                buffer.normal_(0.0, 0.5)
            elif name.endswith("codebook.cluster_usage"):
                buffer.fill_(1.0)


def _set_generation_defaults(model: CsmForConditionalGeneration) -> None:
    """csm-1b's shipped sampling defaults, plus suppression of ids Mimi cannot decode.

    Fresh ``GenerationConfig`` objects: the ones derived from the model config are flagged
    ``_from_model_config``, and such a generation config drops the ``depth_decoder_*`` keys
    when it is loaded back.
    """
    undecodable = list(range(CODEBOOK_SIZE, model.config.vocab_size))
    sampling = {"do_sample": True, "top_k": 50, "temperature": 0.9, "suppress_tokens": undecodable}
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        pad_token_id=model.config.pad_token_id,
        max_new_tokens=125,
        **sampling,
    )
    model.depth_decoder.generation_config = GenerationConfig(**sampling)


def build_tiny_checkpoint(out_dir: Path, *, seed: int = 0) -> Path:
    """Write a tiny random CSM checkpoint (model + processor + marker) into ``out_dir``.

    The same seed always gives byte-identical files. The global torch RNG is left untouched.

    Args:
        out_dir: Folder to write into (created if missing; existing files are overwritten).
        seed: Seed of the random weights.

    Returns:
        ``out_dir``, ready for ``CsmEngine.load(str(out_dir))``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    config = _build_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CsmForConditionalGeneration(config)
        _randomise_codebooks(model)
    _set_generation_defaults(model)
    feature_extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=24000)
    processor = CsmProcessor(feature_extractor, tokenizer, chat_template=CHAT_TEMPLATE)
    with quiet_progress_bars():
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)

    marker = {"parley_tiny": True, "seed": seed}
    (out_dir / TINY_MARKER).write_text(json.dumps(marker, sort_keys=True) + "\n")
    return out_dir
