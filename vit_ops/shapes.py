"""`ViTShape` of a timm architecture name or of a timm `VisionTransformer` instance.

The figures (embedding width, depth, heads, MLP width, patch size) are read from a model timm builds
on the `meta` device, so they are timm's own numbers rather than a table typed here; building on
`meta` allocates no weights and takes milliseconds even for ViT-L.
"""

from __future__ import annotations

import timm
from timm.models.vision_transformer import VisionTransformer

from planner.errors import InputError
from planner.vit_shape import ViTShape, full_counts
from vit_ops.architecture import build_vit

# The ViTs edvit ships built-in profiles for (`python -m profiler.builtin`); any other timm
# architecture that `build_vit` rebuilds exactly (DeiT, other patch sizes or resolutions) works too.
BUILTIN_PROFILE_ARCHS = (
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_large_patch16_224",
)


def shape_for_arch(arch: str, num_classes: int, img_size: int | None = None) -> ViTShape:
    """Shape of timm architecture `arch` with a `num_classes`-way head at `img_size` pixels.

    `arch` is any timm model name whose model `vit_ops.architecture.build_vit` rebuilds exactly
    (the standard ViTs and DeiTs at any patch size and resolution; checked by `check_rebuildable`).
    `img_size=None` keeps the architecture's native resolution. Raises `InputError` for another
    architecture, a class count below 1, or an image size the patch size does not divide (timm
    would silently drop the border pixels).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError("number of classes must be a positive integer", field="num_classes",
                         value=num_classes)
    kwargs = {"num_classes": num_classes}
    if img_size is not None:
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise InputError("image size must be a positive integer", field="img_size",
                             value=img_size)
        patch = _meta_model(arch, **kwargs).patch_embed.patch_size[0]
        if img_size % patch:
            raise InputError(f"image size is not divisible by the patch size {patch}",
                             field="img_size", value=img_size)
        kwargs["img_size"] = img_size
    model = _meta_model(arch, **kwargs)
    shape = shape_of_model(model, arch=arch)
    check_rebuildable(model, shape)
    return shape


def check_rebuildable(model, shape: ViTShape) -> None:
    """`build_vit(shape)` must be `model`: the same parameters and the same modules (layer types,
    norms, activations), or pruning would slice weights into a different network."""
    rebuilt = build_vit(shape, full_counts(shape), device="meta")
    ours = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if ours != theirs or repr(rebuilt) != repr(model):
        extra = sorted(set(theirs) - set(ours))
        detail = f" (it has {', '.join(extra[:3])})" if extra else ""
        raise InputError("not a plain ViT that edvit can prune: its modules differ from timm's "
                         f"VisionTransformer{detail}; plain ViTs and DeiTs such as "
                         "vit_base_patch16_224 or deit_small_patch16_224 are supported",
                         field="arch", value=shape.arch)


def _meta_model(arch: str, **kwargs):
    """timm's model `arch` on the meta device (no weights, no download)."""
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise InputError(f"not a timm architecture; e.g. {', '.join(BUILTIN_PROFILE_ARCHS)}",
                         field="arch", value=arch)
    try:
        model = timm.create_model(arch, pretrained=False, device="meta", weight_init="skip",
                                  **kwargs)
    except TypeError:  # a model family without ViT's init options: not a ViT
        raise InputError("not a timm VisionTransformer", field="arch", value=arch) from None
    if not isinstance(model, VisionTransformer):
        raise InputError(f"not a timm VisionTransformer ({type(model).__name__})", field="arch",
                         value=arch)
    return model


def shape_of_model(model, arch: str | None = None) -> ViTShape:
    """Shape of a timm `VisionTransformer` (any device, including `meta`).

    `arch` labels the shape; by default timm's architecture name from the model's pretrained config,
    or "custom" for a model built directly from `VisionTransformer(...)`. Raises `InputError` for a
    model the edvit pruning rule cannot describe: non-square input or patches, blocks of different
    widths, register tokens, or no classifier head.
    """
    if not isinstance(model, VisionTransformer):
        raise InputError("not a timm VisionTransformer", field="model",
                         value=type(model).__name__)
    label = arch or _arch_label(model)
    img_h, img_w = model.patch_embed.img_size
    patch_h, patch_w = model.patch_embed.patch_size
    if img_h != img_w or patch_h != patch_w:
        raise InputError("only square images and patches are supported", field="img_size",
                         value=(img_h, img_w, patch_h, patch_w))
    if getattr(model, "reg_token", None) is not None:
        raise InputError("register tokens are not supported", field="model", value=label)
    if model.num_classes < 1:
        raise InputError("model has no classifier head (num_classes=0)", field="num_classes",
                         value=model.num_classes)
    blocks = list(model.blocks)
    try:
        per_block = {(b.attn.num_heads, b.attn.head_dim, b.mlp.fc1.out_features) for b in blocks}
    except AttributeError:
        raise InputError("blocks are not standard ViT blocks (attention + MLP)", field="model",
                         value=label) from None
    if len(per_block) != 1:
        raise InputError("blocks differ in heads or MLP width (a pruned model?); "
                         "a ViTShape describes a uniform model", field="model", value=label)
    (num_heads, head_dim, mlp_hidden), = per_block
    return ViTShape(
        arch=label,
        img_size=img_h,
        patch_size=patch_h,
        in_chans=model.patch_embed.proj.in_channels,
        embed_dim=model.embed_dim,
        depth=len(blocks),
        num_heads=num_heads,
        head_dim=head_dim,
        mlp_hidden=mlp_hidden,
        num_classes=model.num_classes,
        class_token=model.cls_token is not None,
    )


def _arch_label(model) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or "custom"
