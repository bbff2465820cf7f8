"""Typed SAM2 / SAM2.1 model presets (the official Hydra configs, written as dataclasses).

Only settings that differ between the official presets, or that a user may want to change,
are fields here; behaviour shared by every official SAM2 config (object-score head, object
pointers, high-resolution features in the decoder, ...) is built into the model code.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HieraConfig:
    """Hiera trunk sizes (official `image_encoder.trunk`)."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    drop_path_rate: float = 0.0

    @property
    def backbone_channel_list(self) -> tuple[int, ...]:
        """Channels of the trunk's 4 stage outputs, coarsest first (the FPN neck's input order)."""
        dims = [int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages))]
        return tuple(reversed(dims))


@dataclass(frozen=True)
class SAM2Config:
    """Everything needed to build a SAM2 model. Build one with `sam2_config(name, ...)`."""

    name: str
    trunk: HieraConfig = field(default_factory=HieraConfig)
    image_size: int = 1024
    d_model: int = 256  # transformer / FPN width
    mem_dim: int = 64  # memory feature channels
    num_maskmem: int = 7  # 1 conditioning + 6 previous frames
    memory_attention_layers: int = 4
    memory_attention_ffn_dim: int = 2048
    dropout: float = 0.1  # memory-attention dropout (active in training only)
    # differences between SAM2 (2024-07) and SAM2.1 (2024-09)
    no_obj_embed_spatial: bool = True
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    # tracking behaviour (official defaults)
    max_cond_frames_in_attn: int = -1  # -1: every conditioning frame attends
    max_obj_ptrs_in_encoder: int = 16
    memory_temporal_stride_for_eval: int = 1
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    use_mask_input_as_output_without_sam: bool = True
    multimask_output_in_sam: bool = True
    multimask_output_for_tracking: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    # video-predictor post-processing (official build_sam2_video_predictor values)
    binarize_mask_from_pts_for_mem_enc: bool = True
    fill_hole_area: int = 8  # 0 switches hole filling off
    memory_in_bfloat16: bool = True  # official predictor stores memory features in bf16

    def __post_init__(self) -> None:
        if self.image_size % 32 != 0 or self.image_size < 64:
            raise ValueError(
                f"image_size must be a multiple of 32 and at least 64, got {self.image_size}"
            )

    @property
    def backbone_stride(self) -> int:
        return 16

    @property
    def feat_size(self) -> int:
        """Side of the lowest-resolution (stride 16) feature map."""
        return self.image_size // 16

    def replace(self, **changes) -> "SAM2Config":
        """A copy with some fields changed; unknown field names raise a clear error."""
        names = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in names:
                close = difflib.get_close_matches(key, sorted(names), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"Unknown SAM2Config field {key!r}.{hint}")
        return dataclasses.replace(self, **changes)


_TRUNKS = {
    "t": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                     window_pos_embed_bkg_spatial_size=(7, 7)),
    "s": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                     window_pos_embed_bkg_spatial_size=(7, 7)),
    "b+": HieraConfig(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
                      window_pos_embed_bkg_spatial_size=(14, 14)),
    "l": HieraConfig(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                     window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8)),
    # tiny test trunk: 4 stages, 1 block each, windows small enough for 64-256 px images. Its global
    # attention sits at stride 16, as in the official trunks (stage 3): at stride 4 (block 0) it attended
    # over 1024 tokens at 128 px, and a demo training step took 1.04 s instead of 0.89 s
    "test": HieraConfig(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(2,),
                        window_pos_embed_bkg_spatial_size=(4, 4), window_spec=(4, 2, 2, 2)),
}

_SIZE_ALIASES = {"t": "t", "tiny": "t", "s": "s", "small": "s", "b+": "b+", "base_plus": "b+",
                 "base-plus": "b+", "bplus": "b+", "l": "l", "large": "l"}


def _make(version: str, size: str) -> SAM2Config:
    name = f"{version}_hiera_{size}"
    if version == "sam2":
        return SAM2Config(name=name, trunk=_TRUNKS[size], no_obj_embed_spatial=False,
                          add_tpos_enc_to_obj_ptrs=False, proj_tpos_enc_in_obj_ptrs=False,
                          use_signed_tpos_enc_to_obj_ptrs=False)
    return SAM2Config(name=name, trunk=_TRUNKS[size])


PRESET_NAMES: tuple[str, ...] = tuple(
    f"{v}_hiera_{s}" for v in ("sam2", "sam2.1") for s in ("t", "s", "b+", "l")
) + ("sam2.1_tiny_test",)


def _canonical_name(name: str) -> str | None:
    """Map 'sam2.1_hiera_tiny', 'configs/sam2.1/sam2.1_hiera_t.yaml', 'sam2_hiera_large.pt'... to a preset."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".yaml", ".yml", ".pt"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    base = base.lower()
    if base in PRESET_NAMES:
        return base
    for version in ("sam2.1", "sam2"):
        prefix = f"{version}_hiera_"
        if base.startswith(prefix) and base[len(prefix):] in _SIZE_ALIASES:
            return f"{prefix}{_SIZE_ALIASES[base[len(prefix):]]}"
    return None


def sam2_config(name: str | SAM2Config, image_size: int | None = None, **overrides) -> SAM2Config:
    """The preset `name` (e.g. 'sam2.1_hiera_t', 'sam2.1_hiera_tiny', 'configs/sam2.1/sam2.1_hiera_t.yaml').

    `image_size` (official 1024; any multiple of 32 works) and other SAM2Config fields may be overridden.
    """
    if isinstance(name, SAM2Config):
        cfg = name
    else:
        canonical = _canonical_name(str(name))
        if canonical is None:
            raise ValueError(
                f"Unknown SAM2 preset {name!r}. Known presets: {', '.join(PRESET_NAMES)} "
                "(sizes may also be spelled tiny/small/base_plus/large, or given as an official "
                "config path such as configs/sam2.1/sam2.1_hiera_t.yaml)."
            )
        if canonical == "sam2.1_tiny_test":
            cfg = SAM2Config(name=canonical, trunk=_TRUNKS["test"], image_size=128, d_model=64,
                             mem_dim=32, memory_attention_layers=2, memory_attention_ffn_dim=256)
        else:
            version, size = canonical.split("_hiera_")
            cfg = _make(version, size)
    if image_size is not None:
        overrides["image_size"] = int(image_size)
    return cfg.replace(**overrides) if overrides else cfg
