"""`ViTShape` of a timm architecture name or of a timm `VisionTransformer` instance.

The figures (embedding width, depth, heads, MLP width, patch size) are read from a model timm builds
on the `meta` device, so they are timm's own numbers rather than a table typed here; building on
`meta` allocates no weights and takes milliseconds even for ViT-L.
"""

from __future__ import annotations

from planner.errors import InputError
from planner.vit_shape import ViTShape

SUPPORTED_ARCHS = (
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_large_patch16_224",
)


def shape_for_arch(arch: str, num_classes: int, img_size: int | None = None) -> ViTShape:
    """Shape of timm architecture `arch` with a `num_classes`-way head at `img_size` pixels.

    `img_size=None` keeps the architecture's native resolution (224). Raises `InputError` for an
    architecture outside `SUPPORTED_ARCHS`, a class count below 1, or an image size the patch size
    does not divide (timm would silently drop the border pixels).
    """
    import timm

    if arch not in SUPPORTED_ARCHS:
        raise InputError(f"unknown architecture; supported: {', '.join(SUPPORTED_ARCHS)}",
                         field="arch", value=arch)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError("number of classes must be a positive integer", field="num_classes",
                         value=num_classes)
    kwargs = {"pretrained": False, "num_classes": num_classes, "device": "meta",
              "weight_init": "skip"}
    if img_size is not None:
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise InputError("image size must be a positive integer", field="img_size",
                             value=img_size)
        patch = timm.create_model(arch, **kwargs).patch_embed.patch_size[0]
        if img_size % patch:
            raise InputError(f"image size is not divisible by the patch size {patch}",
                             field="img_size", value=img_size)
        kwargs["img_size"] = img_size
    return shape_of_model(timm.create_model(arch, **kwargs), arch=arch)


def shape_of_model(model, arch: str | None = None) -> ViTShape:
    """Shape of a timm `VisionTransformer` (any device, including `meta`).

    `arch` labels the shape; by default timm's architecture name from the model's pretrained config,
    or "custom" for a model built directly from `VisionTransformer(...)`. Raises `InputError` for a
    model the edvit pruning rule cannot describe: non-square input or patches, blocks of different
    widths, register tokens, or no classifier head.
    """
    from timm.models.vision_transformer import VisionTransformer

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
    per_block = {(b.attn.num_heads, b.attn.head_dim, b.mlp.fc1.out_features) for b in blocks}
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
