"""The typed run configuration: one YAML file with `model:`, `dataset:` and `train:` sections.

`load_config(path, overrides)` reads the file, applies command-line overrides such as
`train.lr=1e-5`, and checks every key and value against the dataclasses below: an unknown key
names the closest valid one, a value of the wrong type names the key and the expected type, and
either error names the override that brought the key in, or else the file.
`RunConfig.to_dict()` is the resolved config saved into checkpoints.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import yaml

from sam2_video.errors import UserInputError

MODEL_KINDS = ("sam2", "stcn")
STCN_KEY_BACKBONES = (18, 50)
DATASET_TYPES = ("video", "coco", "vos", "sav", "synthetic")
PROMPT_TYPES = ("point", "bbox", "mask")
SAV_ANNOTATION_KINDS = ("manual", "auto")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# modules whose activations `train.activation_checkpointing` may recompute (sam2_train.CHECKPOINTABLE_MODULES)
CHECKPOINTABLE_MODULES = ("image_encoder", "memory_attention", "memory_encoder", "sam_mask_decoder", "sam_prompt_encoder")
# keys that no longer exist, with what to write instead
REPLACED_KEYS = {
    "train.amp": "'train.amp' was replaced by 'train.precision': write 'precision: auto' for amp: true (bf16 "
                 "autocast on GPUs that have it, fp16 with loss scaling on those that do not, fp32 on the CPU) "
                 "or 'precision: fp32' for amp: false",
}
# the STCN settings were flat `model.stcn_<name>` keys before they got the `model.stcn:` section
STCN_KEYS = ("key_backbone", "value_dim", "decoder_dim", "max_objects", "mem_every", "key_resnet_weights",
             "value_resnet_weights")
REPLACED_KEYS.update({
    f"model.stcn_{name}": f"'model.stcn_{name}' was replaced by 'model.stcn.{name}' (in YAML: '{name}:' inside "
                          "'stcn:' under 'model:')"
    for name in STCN_KEYS
})
Where = Callable[[str], str]  # dotted key -> where its value came from (the file or a command-line override)
# what `dataset.data_path` must hold, per dataset_type
DATA_PATH_CONTENTS = {
    "video": "a folder of video folders of frames, <data_path>/<video>/<frame>.jpg",
    "coco": "a COCO-video JSON file with images (video_id, order_in_video) and RLE annotations",
    "vos": "a DAVIS-layout folder with JPEGImages/<video>/ and Annotations/<video>/",
    "sav": "the SA-V frames folder, <data_path>/<video>/<frame>.jpg",
}


@dataclass
class STCNSection:
    """`model.stcn:`, the settings of the STCN baseline (read only with `model: stcn`).

    `max_objects`: objects per tracked video (training clips hold up to `dataset.max_num_objects`);
    `mem_every`: the memory interval of its video predictor (validation, predict); the
    `*_resnet_weights`: optional torchvision ImageNet ResNet weights for its encoders.
    """

    key_backbone: int = 50  # ResNet depth of the key encoder: 50 (paper) or 18
    value_dim: int = 512
    decoder_dim: int = 512
    max_objects: int = 20
    mem_every: int = 5  # predictor: every N-th frame joins the permanent memory
    key_resnet_weights: str | None = None  # torchvision resnet{50,18} ImageNet .pth for the key encoder
    value_resnet_weights: str | None = None  # torchvision resnet18 ImageNet .pth for the value encoder


@dataclass
class ModelSection:
    """What to fine-tune: `model` is sam2 (the product, whose settings are this section's own keys)
    or stcn (the baseline, set in the `stcn:` sub-section).

    sam2: `config_path` is a preset name (e.g. `sam2.1_hiera_t`) or an official config file,
    `checkpoint_path` official weights (None: random init). The `*_for_train` prompt-simulation
    settings left at None keep the official SAM2 recipe's values; `trainable_modules` applies to
    sam2 only. `image_size` applies to both.
    """

    model: str = "sam2"
    checkpoint_path: str | None = None
    config_path: str = "sam2.1_hiera_t"
    trainable_modules: list[str] = field(default_factory=lambda: ["memory_attention", "memory_encoder"])
    image_size: int = 512
    num_maskmem: int = 7
    feature_cache_frames: int = 0  # frozen image encoder + no augmentation: keep this many frames' features
    prob_to_use_pt_input_for_train: float | None = None
    prob_to_use_box_input_for_train: float | None = None
    num_init_cond_frames_for_train: int | None = None
    num_frames_to_correct_for_train: int | None = None
    num_correction_pt_per_frame: int | None = None
    prob_to_sample_from_gt_for_train: float | None = None
    # Tracked frames (no prompt): the official SAM2 decodes three candidate masks and keeps the one
    # its IoU head scores highest, which needs a trained IoU head. Trained from random weights, that
    # head collapses to predicting ~0 for every candidate, so the kept mask (and the memory built
    # from it) is close to a random pick. false decodes one mask, the one the loss trains. None keeps
    # the preset's (official: true). Part of the architecture: predict and annotate read it from the
    # run's checkpoint; the official predictor needs the same setting in its config.
    multimask_output_for_tracking: bool | None = None
    # In evaluation only, the official SAM2 swaps a single decoded mask whose stability score is low
    # for the best of the three candidates. With multimask_output_for_tracking false those candidates
    # are never trained on tracked frames, so the swap puts untrained masks into validation and
    # prediction (held-out J 0.09 where the training forward had 0.49): it must be false then.
    dynamic_multimask_via_stability: bool | None = None
    # Dropout inside memory attention while training (the official 0.1 regularises fine-tuning on
    # small data; evaluation never drops). 0 also lets PyTorch's CPU attention run its fused kernel,
    # which materialises every attention matrix when it has to drop: the demo's steps took 25% less
    # time. None keeps the preset's.
    memory_attention_dropout: float | None = None
    stcn: STCNSection = field(default_factory=STCNSection)

    def sam2_overrides(self) -> dict[str, Any]:
        """SAM2Config fields this section sets on top of its preset (besides the image size)."""
        overrides: dict[str, Any] = {"num_maskmem": self.num_maskmem}
        for name in ("multimask_output_for_tracking", "dynamic_multimask_via_stability"):
            if getattr(self, name) is not None:
                overrides[name] = getattr(self, name)
        if self.memory_attention_dropout is not None:
            overrides["dropout"] = self.memory_attention_dropout
        return overrides


@dataclass
class DataSection:
    """Where the clips come from and how they are sampled (seed 002's `dataset:` block).

    `data_path`: vos, a DAVIS-layout folder (JPEGImages/, Annotations/); video, a folder of frame
    folders (masks synthesized); coco, the COCO-video JSON (images under `image_root`, default its
    folder); sav, the SA-V frames folder with the `<video>_manual.json` files in `annotations_path`;
    synthetic data is generated in memory (`synthetic_videos` videos of `synthetic_frames` frames). `image_size` is an int or
    [height, width] and must match the model (None: the model's); `explicit_prompts` uses the
    dataset's own prompts as they are (seed 003: BCSS-style label maps with prompt files).

    Prompts: SAM2's training recipe draws its own first prompt per clip (a mask, a box or a click,
    then correction clicks); `prompt_types` says which of those kinds it may draw (see
    `recipe_prompt_probabilities`). The generated-prompt settings `num_of_pos_points`,
    `num_of_neg_points` and `include_center_point` shape the prompts the dataset makes for objects
    that have none of their own when `explicit_prompts` is on.
    """

    dataset_type: str = "vos"
    data_path: str | None = None
    image_size: list[int] | None = None
    video_clip_length: int = 8
    max_num_objects: int = 3
    batch_size: int = 1
    num_workers: int = 2
    shuffle: bool = True
    prompt_types: list[str] = field(default_factory=lambda: ["point", "bbox", "mask"])
    num_of_pos_points: int = 1
    num_of_neg_points: int = 0
    include_center_point: bool = False
    explicit_prompts: bool = False
    augment: bool = True
    image_root: str | None = None  # coco: folder the JSON's image paths are relative to
    annotations_path: str | None = None  # sav: folder of <video>_manual.json (or _auto.json) masklets
    sav_annotation_kind: str = "manual"  # sav: manual (<video>_manual.json) or auto (<video>_auto.json)
    video_list: str | None = None  # vos, sav, video: text file naming the videos to use (default: all)
    prompts_dir: str | None = None  # vos: folder of <video>.json explicit prompts
    ignore_ids: list[int] = field(default_factory=list)  # vos: label values that are not objects
    val_data_path: str | None = None  # DAVIS-layout folder of held-out videos for J&F validation
    synthetic_videos: int = 64
    synthetic_frames: int = 16
    synthetic_objects: list[int] = field(default_factory=lambda: [1, 3])  # [fewest, most] objects per video


@dataclass
class TrainSection:
    """Optimisation, schedule, checkpoints and logging.

    Learning rates follow the official SAM2.1 fine-tuning recipe; the schedule warms up linearly
    for `warmup_steps` optimizer steps, then follows a cosine from `lr` down to `lr * final_lr_ratio`.
    """

    out_dir: str = "runs/train"
    epochs: int = 10
    lr: float = 5.0e-6
    image_encoder_lr: float = 3.0e-6
    weight_decay: float = 0.1
    layer_decay: float = 0.9  # per-block lr decay inside image_encoder.trunk; 1.0 turns it off
    warmup_steps: int = 0
    final_lr_ratio: float = 0.1
    grad_clip: float = 0.1  # max gradient norm; 0 turns clipping off
    grad_accumulation: int = 1
    # autocast dtype. bf16 halves activation memory and runs on tensor cores with fp32's range (no loss
    # scaling); GPUs before Ampere (T4, V100) lack it, and fp16 there needs a GradScaler against
    # underflowing gradients. auto: bf16 where the GPU has it natively, else fp16 + GradScaler, fp32 on
    # the CPU. Memory features keep the dtype the official predictor stores at inference (bf16).
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    # recompute activations in the backward pass instead of keeping them (one extra forward pass of
    # those modules, a fraction of the memory): true for all of image_encoder, memory_attention,
    # memory_encoder, sam_mask_decoder, sam_prompt_encoder, or a list of them; applies where gradients
    # flow (a frozen image encoder keeps no activations anyway). sam2 models only.
    activation_checkpointing: bool | list[str] = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    # with `dataset.val_data_path`, J&F is scored every `val_every_epochs` epochs (0: never by epoch), every
    # `val_every_steps` steps (0: never by step), and always after the last epoch
    val_every_epochs: int = 1
    val_every_steps: int = 0
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    log_every_steps: int = 1
    # loss weights and settings (official MultiStepMultiMasksAndIous)
    loss_mask_weight: float = 20.0
    loss_dice_weight: float = 1.0
    loss_iou_weight: float = 1.0
    loss_class_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    supervise_all_iou: bool = True
    iou_use_l1_loss: bool = True


@dataclass
class RunConfig:
    """One training run: `model:`, `dataset:` and `train:` sections of the YAML file."""

    model: ModelSection = field(default_factory=ModelSection)
    dataset: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint friendly); `load_config` reads it back."""
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config, apply `section.key=value` overrides, check it, return a `RunConfig`.

    `path` None starts from the defaults. Override values are parsed as YAML (`train.lr=1e-5`,
    `model.trainable_modules=[memory_attention,sam_mask_decoder]`). Raises `UserInputError`.
    """
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"{path}: config file not found (expected a YAML file with model:, dataset:, train:)")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise UserInputError(f"{path}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserInputError(f"{path}: expected a mapping with model:, dataset:, train: at the top level")
        raw = loaded or {}
    overridden = {_apply_override(raw, override): override for override in overrides}

    def where(key: str) -> str:
        """The override that set `key` (or a section holding it, or a key inside it), else the file."""
        key = key.split("[")[0]
        for name, override in reversed(overridden.items()):
            if key == name or key.startswith(f"{name}.") or name.startswith(f"{key}."):
                return f"command-line override {override!r}"
        return source

    config = _build(RunConfig, raw, prefix="", where=where)
    _check_values(config, f"{source} with command-line overrides" if overrides else source)
    return config


def upgrade_stored_config(config: Any) -> Any:
    """A run config as an older version stored it in a checkpoint, in today's shape: the flat
    `model.stcn_<name>` keys move into `model.stcn`. Anything else comes back as it is."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return config
    old_keys = {f"stcn_{name}": name for name in STCN_KEYS}
    flat = {old_keys[key]: value for key, value in model.items() if key in old_keys}
    if not flat:
        return config
    kept = {key: value for key, value in model.items() if key not in old_keys}
    return {**config, "model": {**kept, "stcn": {**kept.get("stcn", {}), **flat}}}


def stored_model_section(config: Any, source: str) -> ModelSection | None:
    """The typed `model:` section of a run config stored in a checkpoint (read through
    `load_training_checkpoint`, which upgrades older shapes); None for weights without one
    (official or exported). Missing keys take their defaults; errors name `source`."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return None
    return _build(ModelSection, model, prefix="model.", where=lambda key: f"{source} (its stored run config)")


def _apply_override(raw: dict[str, Any], override: str) -> str:
    """Set `section.key=value` in `raw`; returns the dotted key."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise UserInputError(f"override {override!r}: expected section.key=value, e.g. train.lr=1e-5")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserInputError(f"override {override!r}: {part!r} is a value, not a section")
        node = child
    try:
        node[leaf] = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise UserInputError(f"override {override!r}: value is not valid YAML: {err}") from None
    return key.strip()


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        keys.append(name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(_all_keys(hints[f.name], f"{name}."))
    return keys


def _unknown_key_error(where: Where, key: str, cls: type, prefix: str) -> UserInputError:
    full_key = f"{prefix}{key}"
    if full_key in REPLACED_KEYS:
        return UserInputError(f"{where(full_key)}: {REPLACED_KEYS[full_key]}")
    section_keys = [f"{prefix}{f.name}" for f in dataclasses.fields(cls)]
    candidates = difflib.get_close_matches(full_key, section_keys, n=1, cutoff=0.5)
    if not candidates:
        candidates = difflib.get_close_matches(full_key, _all_keys(RunConfig), n=1, cutoff=0.5)
    hint = f"; did you mean '{candidates[0]}'?" if candidates else ""
    valid = ", ".join(f.name for f in dataclasses.fields(cls))
    section = f"section '{prefix[:-1]}'" if prefix else "the top level"
    return UserInputError(f"{where(full_key)}: unknown key '{full_key}'{hint} (valid keys in {section}: {valid})")


def _build(cls: type, values: Any, prefix: str, where: Where) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserInputError(f"{where(prefix[:-1])}: '{prefix[:-1]}' must be a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key_error(where, str(key), cls, prefix)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.", where)
        else:
            kwargs[key] = _coerce(value, hint, f"{prefix}{key}", where)
    return cls(**kwargs)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else hint.__name__


def _coerce(value: Any, hint: Any, key: str, where: Where) -> Any:
    """Check `value` against the field type `hint`; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except UserInputError:
                continue
    elif origin is list:
        if key == "dataset.image_size" and isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if isinstance(value, (list, tuple)):
            (item_hint,) = typing.get_args(hint)
            return [_coerce(item, item_hint, f"{key}[{i}]", where) for i, item in enumerate(value)]
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise UserInputError(f"{where(key)}: '{key}' must be {_type_name(hint)}, got {value!r}")


def _check_choice(source: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserInputError(f"{source}: '{key}' is {value!r}{hint} (expected one of {', '.join(choices)})")


def recipe_prompt_probabilities(prompt_types: list[str]) -> dict[str, float]:
    """The SAM2 recipe's probabilities that allow only `prompt_types` (point, bbox, mask) as a clip's
    first prompt: `prob_to_use_pt_input_for_train` (clicks or a box rather than a mask) and
    `prob_to_use_box_input_for_train` (a box rather than a click). A kind left free keeps the
    official value, so all three kinds give {}."""
    kinds = set(prompt_types)
    if not kinds & {"point", "bbox"}:
        return {"prob_to_use_pt_input_for_train": 0.0}  # masks only: the box probability plays no part
    probabilities = {}
    if "mask" not in kinds:
        probabilities["prob_to_use_pt_input_for_train"] = 1.0
    if "bbox" not in kinds:
        probabilities["prob_to_use_box_input_for_train"] = 0.0
    elif "point" not in kinds:
        probabilities["prob_to_use_box_input_for_train"] = 1.0
    return probabilities


def _check_sam2(config: RunConfig, source: str) -> None:
    checkpointing = config.train.activation_checkpointing
    for name in checkpointing if isinstance(checkpointing, list) else []:
        _check_choice(source, "train.activation_checkpointing", name, CHECKPOINTABLE_MODULES)
    if not config.model.trainable_modules:
        raise UserInputError(f"{source}: 'model.trainable_modules' is empty; name at least one module to train")
    if config.model.multimask_output_for_tracking is False and config.model.dynamic_multimask_via_stability is not False:
        raise UserInputError(
            f"{source}: 'model.multimask_output_for_tracking: false' needs 'model.dynamic_multimask_via_stability: "
            "false': in evaluation SAM2 would swap unstable masks for candidates that one-mask training never trains"
        )
    dropout = config.model.memory_attention_dropout
    if dropout is not None and not 0 <= dropout < 1:
        raise UserInputError(f"{source}: 'model.memory_attention_dropout' must be in [0, 1), got {dropout}")


def _check_stcn(config: RunConfig, source: str) -> None:
    model, stcn = config.model, config.model.stcn
    if config.train.activation_checkpointing is not False:
        raise UserInputError(f"{source}: 'train.activation_checkpointing' applies to model sam2 only; "
                             "remove it for stcn")
    if stcn.key_backbone not in STCN_KEY_BACKBONES:
        raise UserInputError(f"{source}: 'model.stcn.key_backbone' must be 18 or 50, got {stcn.key_backbone}")
    if model.image_size % 16 or model.image_size < 32:
        raise UserInputError(f"{source}: 'model.image_size' must be a multiple of 16 (at least 32) for stcn, got {model.image_size}")
    for key in ("value_dim", "decoder_dim", "max_objects", "mem_every"):
        if getattr(stcn, key) < 1:
            raise UserInputError(f"{source}: 'model.stcn.{key}' must be at least 1, got {getattr(stcn, key)}")
    if config.dataset.max_num_objects > stcn.max_objects:
        raise UserInputError(
            f"{source}: 'dataset.max_num_objects' {config.dataset.max_num_objects} exceeds 'model.stcn.max_objects' "
            f"{stcn.max_objects}, the most objects the STCN handles per video"
        )
    for key in ("key_resnet_weights", "value_resnet_weights"):
        path = getattr(stcn, key)
        if path is not None and not Path(path).is_file():
            raise UserInputError(f"{source}: 'model.stcn.{key}' {path} is not a file (expected a torchvision ResNet .pth)")


def _check_values(config: RunConfig, source: str) -> None:
    """Value checks that need more than a type: choices, ranges, and paths that must exist."""
    _check_choice(source, "model.model", config.model.model, MODEL_KINDS)
    data = config.dataset
    _check_choice(source, "dataset.dataset_type", data.dataset_type, DATASET_TYPES)
    for prompt_type in data.prompt_types:
        _check_choice(source, "dataset.prompt_types", prompt_type, PROMPT_TYPES)
    _check_choice(source, "dataset.sav_annotation_kind", data.sav_annotation_kind, SAV_ANNOTATION_KINDS)
    if data.video_list is not None and data.dataset_type not in ("vos", "sav", "video"):
        raise UserInputError(f"{source}: 'dataset.video_list' applies to dataset_type vos, sav and video, "
                             f"not {data.dataset_type!r}")
    if data.video_list is not None and not Path(data.video_list).is_file():
        raise UserInputError(f"{source}: 'dataset.video_list' {data.video_list} is not a file (one video name a line)")
    if not data.prompt_types:
        raise UserInputError(f"{source}: 'dataset.prompt_types' is empty; give some of {', '.join(PROMPT_TYPES)}")
    for key, value in recipe_prompt_probabilities(data.prompt_types).items():
        given = getattr(config.model, key)
        if given is not None and given != value:
            raise UserInputError(
                f"{source}: 'model.{key}' {given} contradicts 'dataset.prompt_types' {data.prompt_types}, "
                f"which needs {value}; change one of them"
            )
    if data.image_size is not None:
        if len(data.image_size) != 2 or min(data.image_size) <= 0:
            raise UserInputError(f"{source}: 'dataset.image_size' must be a positive int or [height, width], got {data.image_size}")
        if data.image_size != [config.model.image_size] * 2:
            raise UserInputError(
                f"{source}: 'dataset.image_size' {data.image_size} differs from 'model.image_size' "
                f"{config.model.image_size}; clips are resized to the model's square input size"
            )
    low, high = (data.synthetic_objects + [0, 0])[:2]
    if len(data.synthetic_objects) != 2 or not 1 <= low <= high:
        raise UserInputError(f"{source}: 'dataset.synthetic_objects' must be [fewest, most] with 1 <= fewest <= most, "
                             f"got {data.synthetic_objects}")
    for key, value in [
        ("dataset.video_clip_length", data.video_clip_length),
        ("dataset.batch_size", data.batch_size),
        ("dataset.max_num_objects", data.max_num_objects),
        ("dataset.synthetic_videos", data.synthetic_videos),
        ("dataset.synthetic_frames", data.synthetic_frames),
        ("model.image_size", config.model.image_size),
        ("model.num_maskmem", config.model.num_maskmem),
        ("train.grad_accumulation", config.train.grad_accumulation),
        ("train.log_every_steps", config.train.log_every_steps),
    ]:
        if value < 1:
            raise UserInputError(f"{source}: '{key}' must be at least 1, got {value}")
    for key, value in [
        ("dataset.num_workers", data.num_workers),
        ("train.epochs", config.train.epochs),
        ("train.warmup_steps", config.train.warmup_steps),
        ("train.val_every_epochs", config.train.val_every_epochs),
        ("train.val_every_steps", config.train.val_every_steps),
        ("train.checkpoint_every_steps", config.train.checkpoint_every_steps),
        ("train.lr", config.train.lr),
        ("train.image_encoder_lr", config.train.image_encoder_lr),
        ("train.grad_clip", config.train.grad_clip),
    ]:
        if value < 0:
            raise UserInputError(f"{source}: '{key}' must not be negative, got {value}")
    _check_choice(source, "train.precision", config.train.precision, PRECISIONS)
    if config.model.feature_cache_frames > 0 and data.augment:
        raise UserInputError(
            f"{source}: 'model.feature_cache_frames' {config.model.feature_cache_frames} needs "
            "'dataset.augment: false': a cached frame's features would belong to another augmentation of it"
        )
    (_check_stcn if config.model.model == "stcn" else _check_sam2)(config, source)
    if data.dataset_type != "synthetic":
        expected = DATA_PATH_CONTENTS[data.dataset_type]
        if data.data_path is None:
            raise UserInputError(
                f"{source}: 'dataset.data_path' is required for dataset_type {data.dataset_type!r} ({expected})"
            )
        path = Path(data.data_path)
        if not path.exists():
            raise UserInputError(f"{source}: 'dataset.data_path' {path} does not exist (expected {expected})")
        if path.is_dir() != (data.dataset_type != "coco"):
            kind = "a folder" if path.is_dir() else "a file"
            raise UserInputError(f"{source}: 'dataset.data_path' {path} is {kind}; expected {expected}")
    if data.dataset_type == "sav" and data.annotations_path is None:
        raise UserInputError(f"{source}: dataset_type 'sav' needs 'dataset.annotations_path' (folder of <video>_manual.json)")
    folders = [("dataset.val_data_path", data.val_data_path), ("dataset.prompts_dir", data.prompts_dir),
               ("dataset.image_root", data.image_root), ("dataset.annotations_path", data.annotations_path)]
    for key, value in folders:
        if value is not None and not Path(value).is_dir():
            raise UserInputError(f"{source}: '{key}' {value} is not a folder")
    checkpoint = config.model.checkpoint_path
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise UserInputError(f"{source}: 'model.checkpoint_path' {checkpoint} is not a file")
