"""Batched greedy generation in which a finished caption stops costing: BLIP's own loop.

transformers' ``generate`` keeps every row of a batch in each decoder step until the last row
ends, so one long caption makes the whole batch pay for its tokens. ``blip_greedy`` runs BLIP's
vision tower once for the batch, then steps the text decoder with its key/value cache
(transformers' ``EncoderDecoderCache``: self-attention keys grow by one token a step,
cross-attention keys over the image are computed once) and drops each row from the batch (its
cache rows, image states and mask) as soon as it emits the end-of-sequence token.

It reproduces what ``BlipForConditionalGeneration.generate`` does with ``num_beams=1`` and
``do_sample=False`` (transformers 5.25, ``modeling_blip.py``): the decoder starts from
``[bos] + prefix`` (the prompt's first token replaced by ``text_config.bos_token_id``, its final
``[SEP]`` dropped), stops a row at ``text_config.sep_token_id``, pads finished rows with
``text_config.pad_token_id`` and picks ``argmax`` of the last position's logits
(``logits_to_keep=1``, as ``generate`` asks of a model that takes it). So its tokens are those of
``generate``, row for row (tests/test_caption_speed.py checks batch against one image at a time).
"""

from __future__ import annotations

from typing import Any

import torch


def blip_greedy(model: Any, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, max_new_tokens: int) -> torch.Tensor:
    """Greedy captions of a ``BlipForConditionalGeneration`` for a batch of images.

    Args:
        model: the BLIP captioning model (eval mode).
        pixel_values: ``(B, 3, H, W)``.
        input_ids, attention_mask: ``(B, L)`` prompt tokens as BLIP's processor gives them
            (``[CLS] prefix [SEP]``), or ``None`` for no prefix.
        max_new_tokens: most tokens generated per row.

    Returns:
        ``(B, L - 1 + N)`` token ids (``L - 1 = 1`` without a prefix): ``[bos] prefix`` then the
        new tokens, each row padded with the pad id after its end-of-sequence token; ``N`` is the
        longest row's count of new tokens, as ``generate`` returns them.
    """
    text = model.config.text_config
    image_states = model.vision_model(pixel_values=pixel_values)[0]
    batch = image_states.shape[0]
    if input_ids is None:
        input_ids = torch.tensor([[model.decoder_input_ids, text.eos_token_id]], device=image_states.device)
        input_ids = input_ids.repeat(batch, 1)
    else:
        input_ids = input_ids.clone()
    input_ids[:, 0] = text.bos_token_id
    input_ids = input_ids[:, :-1]
    mask = attention_mask[:, :-1] if attention_mask is not None else torch.ones_like(input_ids)
    new = greedy_decode(model.text_decoder, input_ids, mask, image_states, eos=text.sep_token_id,
                        pad=text.pad_token_id, max_new_tokens=max_new_tokens)
    return torch.cat([input_ids, new], dim=1)


def greedy_decode(decoder: Any, input_ids: torch.Tensor, mask: torch.Tensor, image_states: torch.Tensor, *,
                  eos: int, pad: int, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding with a shrinking batch: a row leaves every tensor once it ends.

    Args:
        decoder: a decoder LM taking ``input_ids``, ``attention_mask``, ``encoder_hidden_states``,
            ``encoder_attention_mask``, ``cache``, ``use_cache``, ``logits_to_keep`` (BLIP's
            ``BlipTextLMHeadModel``).
        input_ids, mask: ``(B, L)`` start tokens and their mask.
        image_states: ``(B, S, D)`` the vision tower's last hidden states.
        eos, pad: end-of-sequence and padding token ids.
        max_new_tokens: most tokens per row.

    Returns:
        ``(B, N)`` new tokens, ``N <= max_new_tokens`` the longest row's length, rows padded with ``pad``.
    """
    batch = input_ids.shape[0]
    out = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=input_ids.device)
    alive = torch.arange(batch, device=input_ids.device)
    image_mask = torch.ones(image_states.shape[:2], dtype=torch.long, device=image_states.device)
    step_ids, cache, steps = input_ids, None, 0
    for step in range(max_new_tokens):
        result = decoder(input_ids=step_ids, attention_mask=mask, encoder_hidden_states=image_states,
                         encoder_attention_mask=image_mask, cache=cache, use_cache=True, is_decoder=True,
                         logits_to_keep=1)
        cache = result.cache
        tokens = result.logits[:, -1, :].float().argmax(dim=-1)
        out[alive, step] = tokens
        steps = step + 1
        ended = tokens == eos
        if bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(1)
            alive, tokens, mask = alive[keep], tokens[keep], mask[keep]
            image_states, image_mask = image_states[keep], image_mask[keep]
            cache.batch_select_indices(keep)
        step_ids = tokens[:, None]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    return out[:, :steps]
