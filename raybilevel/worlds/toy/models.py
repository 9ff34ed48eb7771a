"""Architectures of the toy world's components: built from configs, no downloads."""
from __future__ import annotations

import torch
from torch import nn

from raybilevel.worlds.toy.data import ATTRIBUTES, RESOLUTION, vocabulary

TEXT_MAX_LENGTH = 12


def teacher_unet_config() -> dict:
    # Cross-attention only at 8x8 and 4x4: at 16x16 it cost 2-4x the step time for no visible gain.
    return dict(
        sample_size=RESOLUTION, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )


def build_teacher_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**teacher_unet_config())


def build_text_encoder(seed: int):
    """A frozen random one-layer CLIP text encoder: the captions only need distinct, stable embeddings."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(vocabulary()) + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=TEXT_MAX_LENGTH, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )
    return CLIPTextModel(config).eval().requires_grad_(False)


def build_tokenizer():
    """A word-level tokenizer over the world's vocabulary, loadable with AutoTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    vocab.update({word: i + 4 for i, word in enumerate(vocabulary())})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=TEXT_MAX_LENGTH)


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


class Judge(nn.Module):
    """A small CNN that reads shape, colour and style; its pooled features serve the Fréchet distance."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            # keep the 4x4 layout: global pooling blurred striped circles into striped squares
            nn.Flatten(), nn.Linear(64 * (RESOLUTION // 4) ** 2, self.feature_dim), nn.ReLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(self.feature_dim, len(values))
                                    for name, values in ATTRIBUTES.items()})

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.features(images)
        return features, {name: head(features) for name, head in self.heads.items()}
