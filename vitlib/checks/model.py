"""Checks of week 04: the class-token head (eq. 4), the whole ViT, Table 1's counts, torchvision's weights.

    y = LN(z_L^0)                  (4)     then logits = head(y), one Linear

Every check compares with vitlib (`vitlib.model.ViT`, `vitlib.interop.from_torchvision`)
and recognises the usual mistakes: mean pooling or the last token instead of the class
token, a missing final LayerNorm, position embeddings not added, a class token that is
not a registered parameter, a parameter count that forgets a part, a conv weight
flattened in the wrong order.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vitlib import checks
from vitlib.checks import CheckFailed
from vitlib.configs import get_config
from vitlib.interop import _TORCHVISION_NAMES, _rename, from_torchvision
from vitlib.model import ViT as ReferenceViT
from vitlib.model import ViTConfig

__all__ = [
    "check_classification_head",
    "check_vit",
    "check_count_parameters",
    "check_convert_torchvision_state_dict",
    "parameter_count_parts",
    "VIT_ARGUMENTS",
]

# The constructor arguments of the student's ViT, in this order (the exercise's signature).
VIT_ARGUMENTS = ("image_size", "patch_size", "in_channels", "num_classes", "hidden_dim", "mlp_dim", "num_layers", "num_heads")


def _perturb(module: nn.Module, seed: int, scale: float = 0.1) -> nn.Module:
    """Add seeded noise to every parameter: zero-initialised heads and class tokens could hide a wrong mapping."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def _fail_from(cause: BaseException | None, what: str, expected: Any, got: Any, hint: str) -> None:
    """checks.fail, keeping the student's own error attached (its traceback shows the line)."""
    try:
        checks.fail(what, expected, got, hint)
    except CheckFailed as error:
        raise error from cause


# ---------------------------------------------------------------------------------------------
# Exercise 1: the classification head of eq. 4


@checks.exercise("classification_head")
def check_classification_head(classification_head: Callable[..., torch.Tensor]) -> None:
    """`classification_head(z, norm, head)`: z_L (B, N+1, D) -> logits head(norm(z[:, 0])) (B, classes)."""
    for seed, (batch, tokens, dim, classes) in enumerate([(3, 6, 16, 4), (2, 10, 8, 7)]):
        z = checks.seeded(batch, tokens, dim, seed=10 + seed)
        norm = nn.LayerNorm(dim, eps=1e-6)
        head = nn.Linear(dim, classes)
        _perturb(norm, seed=20 + seed, scale=0.5)  # a LayerNorm that is not the identity at init
        _perturb(head, seed=30 + seed, scale=0.5)
        with torch.no_grad():
            got = checks.call_student("classification_head", classification_head, z.clone(), norm, head)
            expected = head(norm(z[:, 0]))  # eq. 4, then the linear head
            mistakes = {
                "that is mean pooling over the tokens (global average pooling, Appendix D.3): "
                "eq. 4 reads the class token only, z[:, 0]": head(norm(z.mean(dim=1))),
                "that is mean pooling (after the LayerNorm): eq. 4 reads the class token only, z[:, 0]": head(norm(z).mean(dim=1)),
                "that reads the last token, z[:, -1]: the class token is the first one, z[:, 0] "
                "(it was prepended in eq. 1)": head(norm(z[:, -1])),
                "the final LayerNorm is missing: eq. 4 is y = LN(z_L^0), then the head": head(z[:, 0]),
            }
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else None
        if shape == (batch, tokens, classes):
            shape_hint = "those are logits for every token: eq. 4 reads one token per image, the class token z[:, 0]"
        elif shape == (batch, 1, classes):
            shape_hint = "the token axis is still there: z[:, 0] drops it (z[:, :1] keeps it)"
        else:
            shape_hint = f"the logits are (B, classes) = ({batch}, {classes}): one row per image, from the class token z[:, 0]"
        checks.expect_close(
            "classification_head logits",
            got,
            expected,
            tol=1e-5,
            mistakes=mistakes,
            hint="eq. 4: take the class token z[:, 0] (B, D), apply `norm`, then `head`",
            shape_hint=shape_hint,
        )
    checks.passed("classification_head", "matches head(LN(z_L^0)) on 2 seeded inputs")


# ---------------------------------------------------------------------------------------------
# Exercise 2: the whole ViT


def _variant(
    ref: ReferenceViT,
    images: torch.Tensor,
    *,
    positions: bool = True,
    class_token: str = "first",
    pool: str = "class",
    final_norm_eps: float | None = 1e-6,
) -> torch.Tensor:
    """The reference's forward pass, with one of the usual mistakes switched on."""
    x = ref.patch_embed(images)  # (B, N, D)
    cls = ref.class_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
    if class_token == "first":
        z = torch.cat([cls, x], dim=1)
    elif class_token == "last":
        z = torch.cat([x, cls], dim=1)
    else:  # "zeros": a fresh zero vector in place of the learned x_class
        z = torch.cat([torch.zeros_like(cls), x], dim=1)
    if positions:
        z = z + ref.pos_embedding
    z = ref.encoder(z)  # (B, N+1, D)
    if pool == "class":
        y = z[:, 0] if class_token != "last" else z[:, -1]
    elif pool == "first":
        y = z[:, 0]
    elif pool == "last":
        y = z[:, -1]
    else:
        y = z.mean(dim=1)
    if final_norm_eps is not None:
        y = F.layer_norm(y, y.shape[-1:], ref.norm.weight, ref.norm.bias, eps=final_norm_eps)
    return ref.head(y)


def _check_parameter(model: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    if not hasattr(model, name):
        checks.fail(
            f"ViT.{name} is missing",
            f"an attribute `self.{name}`, an nn.Parameter of shape {shape}",
            "no such attribute",
            f"name it exactly `{name}` (the check copies vitlib's weights in by name)",
        )
    value = getattr(model, name)
    registered = dict(model.named_parameters(recurse=False))
    if name not in registered or registered[name] is not value:
        checks.fail(
            f"ViT.{name} is not a registered parameter",
            f"an nn.Parameter of shape {shape}, listed by model.parameters() (so the optimiser trains it and state_dict saves it)",
            f"a {type(value).__name__} that model.parameters() does not list",
            f"wrap it when you create it: self.{name} = nn.Parameter(torch.zeros(...)). A plain tensor attribute is "
            "never trained or saved; and nn.Parameter(...).to(device) or .cuda() returns a plain tensor copy "
            "(on a GPU it silently unregisters it): move the whole model with model.to(device) instead",
        )
    if tuple(value.shape) != shape:
        checks.fail(
            f"ViT.{name}: wrong shape",
            f"shape {shape}",
            f"shape {tuple(value.shape)}",
            "class_token is (1, 1, D), one learned token shared by every image; pos_embedding is (1, N+1, D), "
            "one learned vector per position, the class token's included (eq. 1)",
        )


def _initial_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """The head's and E_pos's values as the student's __init__ left them (the check overwrites them later)."""
    values = {"pos_embedding": model.pos_embedding.detach().clone()}
    head = getattr(model, "head", None)
    for part in ("weight", "bias"):
        tensor = getattr(head, part, None)
        if isinstance(tensor, torch.Tensor):
            values[f"head.{part}"] = tensor.detach().clone()
    return values


def _check_initialisation(values: dict[str, torch.Tensor]) -> None:
    """The exercise's init: a zero head (Section 3.2) and E_pos ~ trunc_normal_(std=0.02) (torchvision, timm)."""
    nonzero = [name for name in ("head.weight", "head.bias") if name in values and values[name].abs().max() > 0]
    if nonzero:
        largest = max(values[name].abs().max().item() for name in nonzero)
        checks.fail(
            "ViT.head is not initialised to zeros",
            "head.weight and head.bias all 0, as Section 3.2's zero-initialised D × K layer",
            f"{' and '.join(nonzero)} with values up to |{largest:.3g}|",
            "after self.head = nn.Linear(hidden_dim, num_classes): nn.init.zeros_(self.head.weight) and "
            "nn.init.zeros_(self.head.bias); an untrained ViT then gives every class 1/K (loss ln K)",
        )
    pos = values["pos_embedding"].double()
    std, mean = pos.std().item(), pos.mean().item()
    if not (0.01 <= std <= 0.03 and abs(mean) <= 0.01):  # trunc_normal_(std=0.02) gives 0.018 to 0.022 here
        if std == 0:
            seen = f"every value {mean:.3g}: E_pos is not random"
        elif 0.7 <= std <= 1.3:
            seen = f"std {std:.3g}, values up to |{pos.abs().max().item():.3g}|: std 1, as torch.randn draws, is 50 times too large"
        else:
            seen = f"std {std:.3g}, mean {mean:.3g}"
        checks.fail(
            "ViT.pos_embedding is not initialised as the exercise says",
            "values drawn with std 0.02 around 0 (nn.init.trunc_normal_(..., std=0.02), as torchvision and timm)",
            seen,
            "create it, then draw it: self.pos_embedding = nn.Parameter(torch.empty(1, N + 1, D)); "
            "nn.init.trunc_normal_(self.pos_embedding, std=0.02)",
        )


def _check_vit_once(ViT: Callable[..., nn.Module], config: ViTConfig, seed: int, batch: int) -> None:
    kwargs = {name: getattr(config, name) for name in VIT_ARGUMENTS}
    model = checks.call_student("ViT", ViT, **kwargs)
    if not isinstance(model, nn.Module):
        checks.fail("ViT(...)", "an nn.Module", type(model).__name__, "ViT must subclass nn.Module and call super().__init__() first")
    d, n = config.hidden_dim, config.num_patches
    _check_parameter(model, "class_token", (1, 1, d))
    _check_parameter(model, "pos_embedding", (1, n + 1, d))
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        checks.fail(
            "ViT.encoder.layers",
            f"an nn.ModuleList of {config.num_layers} EncoderBlocks at model.encoder.layers",
            "missing" if layers is None else f"a {type(layers).__name__}",
            "self.encoder = nn.ModuleDict({'layers': nn.ModuleList(...)}) (or any nn.Module holding `layers`); "
            "a Python list hides the blocks from PyTorch: their weights would be neither trained nor saved",
        )
    if len(layers) != config.num_layers:
        checks.fail("ViT.encoder.layers: wrong length", f"{config.num_layers} blocks (num_layers)", f"{len(layers)} blocks", "make one EncoderBlock per layer: range(num_layers)")

    norm = getattr(model, "norm", None)
    if isinstance(norm, nn.LayerNorm) and norm.eps != 1e-6:
        checks.fail(
            "ViT.norm.eps",
            "eps=1e-6 (the paper's code, torchvision and timm)",
            f"eps={norm.eps:g}",
            "the final LayerNorm of eq. 4: nn.LayerNorm(hidden_dim, eps=1e-6); PyTorch's default is 1e-5",
        )
    initial = _initial_values(model)  # checked last: a wrong forward pass is the bigger mistake
    reference = ReferenceViT(config)
    _perturb(reference, seed=seed)
    with torch.no_grad():  # learned-looking class token and positions, so that forgetting one shows
        reference.class_token.copy_(0.5 * checks.seeded(*reference.class_token.shape, seed=seed + 1))
        reference.pos_embedding.copy_(0.5 * checks.seeded(*reference.pos_embedding.shape, seed=seed + 2))
    reference.eval()
    checks.load_reference_weights("ViT", model, reference)
    model.eval()

    images = checks.seeded(batch, config.in_channels, config.image_size, config.image_size, seed=seed + 3)
    try:
        logits = checks.call_student("ViT forward", model, images)
    except CheckFailed as error:
        cause = error.__cause__
        message = str(cause)
        if isinstance(cause, RuntimeError) and "must match the size of tensor" in message:
            _fail_from(
                cause,
                "ViT forward: a size mismatch",
                f"z_0 of shape (B, N+1, D) = ({batch}, {n + 1}, {d}): the class token, then the N = {n} patches, plus pos_embedding (1, N+1, D)",
                f"{type(cause).__name__}: {message}",
                "is the class token prepended before the position embeddings are added? "
                "z = torch.cat([self.class_token.expand(B, -1, -1), x], dim=1) + self.pos_embedding",
            )
        if isinstance(cause, RuntimeError) and "Sizes of tensors must match" in message:
            _fail_from(
                cause,
                "ViT forward: cannot concatenate the class token",
                f"a class token of shape (B, 1, D) = ({batch}, 1, {d}) next to the patches (B, N, D)",
                f"{type(cause).__name__}: {message}",
                "the class token (1, 1, D) is shared by every image: expand it to the batch first, "
                "self.class_token.expand(B, -1, -1), then torch.cat([...], dim=1)",
            )
        raise
    with torch.no_grad():
        expected = reference(images)
        mistakes = {
            "the position embeddings are not added: eq. 1 is z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos": _variant(reference, images, positions=False),
            "the class token is appended after the patches: eq. 1 prepends it, torch.cat([class_token, x], dim=1), "
            "and eq. 4 reads z[:, 0]": _variant(reference, images, class_token="last"),
            "the class token is appended last but z[:, 0] is read: prepend it, torch.cat([class_token, x], dim=1)": _variant(reference, images, class_token="last", pool="first"),
            "a zero vector stands where the learned class token should be: use self.class_token (expanded to the batch)": _variant(reference, images, class_token="zeros"),
            "that is mean pooling over the tokens: eq. 4 reads the class token, z_L[:, 0]": _variant(reference, images, pool="mean"),
            "that reads the last token: the class token is the first, z_L[:, 0]": _variant(reference, images, pool="last"),
            "the final LayerNorm of eq. 4 is missing: y = LN(z_L^0), then the head": _variant(reference, images, final_norm_eps=None),
        }
    checks.expect_close(
        "ViT logits",
        logits,
        expected,
        tol=1e-4,
        mistakes=mistakes,
        hint="follow eqs. 1 to 4 in order: patches -> E, prepend the class token, add pos_embedding, "
        "the encoder blocks, the final LayerNorm on z[:, 0], the head (and use eps=1e-6 in every LayerNorm)",
        shape_hint=f"logits are (B, num_classes) = ({batch}, {config.num_classes}): one row per image, read from the class token only",
    )
    model.zero_grad(set_to_none=True)
    checks.call_student("ViT forward", model, images).sum().backward()
    untrained = [name for name, p in model.named_parameters() if p.grad is None]
    if untrained:
        checks.fail(
            "ViT: some parameters get no gradient",
            "a gradient for every parameter after logits.sum().backward()",
            f"no gradient for {', '.join(untrained[:6])}{' ...' if len(untrained) > 6 else ''}",
            "these parameters are not used in forward, or only through .data / .detach() / torch.no_grad(): "
            "they would never be trained",
        )
    _check_initialisation(initial)


@checks.exercise("ViT")
def check_vit(ViT: Callable[..., nn.Module]) -> None:
    """The student's `ViT(image_size, patch_size, in_channels, num_classes, hidden_dim, mlp_dim, num_layers, num_heads)`.

    Its state-dict names must be vitlib.ViT's: patch_embed.proj, class_token, pos_embedding,
    encoder.layers.{i}.(norm1|attn.qkv|attn.proj|norm2|mlp.fc1|mlp.fc2), norm, head.
    """
    configs = [
        ViTConfig(image_size=16, patch_size=4, in_channels=3, num_classes=5, hidden_dim=32, mlp_dim=64, num_layers=2, num_heads=4),
        ViTConfig(image_size=12, patch_size=4, in_channels=1, num_classes=3, hidden_dim=16, mlp_dim=24, num_layers=1, num_heads=2),
    ]
    with torch.random.fork_rng(devices=[]):  # leave the notebook's random stream as it was
        for i, config in enumerate(configs):
            torch.manual_seed(i)
            _check_vit_once(ViT, config, seed=100 * (i + 1), batch=3 - i)
    checks.passed("ViT", "matches vitlib's logits on 2 configurations; class token and positions are trained parameters")


# ---------------------------------------------------------------------------------------------
# Exercise 3: Table 1's parameter counts, by formula


def parameter_count_parts(config: ViTConfig) -> dict[str, int]:
    """The number of parameters of each part of a ViT (the formula the exercise asks for)."""
    c = config
    d, m, layers = c.hidden_dim, c.mlp_dim, c.num_layers
    return {
        "patch projection E (weight)": c.patch_size**2 * c.in_channels * d,
        "patch projection E (bias)": d,
        "class token": d,
        "position embeddings": (c.num_patches + 1) * d,
        "LayerNorms in the blocks": layers * 4 * d,
        "qkv projections (weights)": layers * 3 * d * d,
        "qkv projections (biases)": layers * 3 * d if c.qkv_bias else 0,
        "attention output projections (weights)": layers * d * d,
        "attention output projections (biases)": layers * d,
        "MLP weights": layers * 2 * d * m,
        "MLP biases": layers * (m + d),
        "final LayerNorm": 2 * d,
        "head (weight)": d * c.num_classes,
        "head (bias)": c.num_classes,
    }


def _suspects(config: ViTConfig, difference: int) -> list[str]:
    """Parts (or the usual mis-countings) whose size equals `difference` = expected - got."""
    p = parameter_count_parts(config)
    d, layers = config.hidden_dim, config.num_layers
    biases = sum(v for k, v in p.items() if "bias" in k)
    known = {
        "every bias (patch projection, qkv, attention projection, MLP, head)": biases,
        "the biases of the Linear layers in the blocks (qkv, projection, MLP)": p["qkv projections (biases)"] + p["attention output projections (biases)"] + p["MLP biases"],
        "the class token (D), or the class token's position ((N+1)·D positions, not N·D)": d,
        "the position embeddings, (N+1)·D": p["position embeddings"],
        "the class token and the position embeddings": d + p["position embeddings"],
        "the LayerNorms: each has a weight and a bias of D, two per block: 4·D per layer": p["LayerNorms in the blocks"],
        "half of the LayerNorms' parameters: each LayerNorm has a weight AND a bias (2·D), two per block": p["LayerNorms in the blocks"] // 2,
        "the final LayerNorm (2·D)": p["final LayerNorm"],
        "every LayerNorm, the final one too": p["LayerNorms in the blocks"] + p["final LayerNorm"],
        "the head (D·classes + classes)": p["head (weight)"] + p["head (bias)"],
        "the head's bias (classes)": p["head (bias)"],
        "the patch projection E (P²·C·D + D)": p["patch projection E (weight)"] + p["patch projection E (bias)"],
        "the patch projection's bias (D)": d,
        "the MLP biases (mlp_dim + D per layer)": p["MLP biases"],
        "the qkv biases (3·D per layer)": p["qkv projections (biases)"],
        "q, k and v: U_qkv is D × 3D (3·D² weights per layer), not D × D": layers * 2 * d * d,
        "the attention output projection U_msa (D² + D per layer)": p["attention output projections (weights)"] + p["attention output projections (biases)"],
        "one of the two MLP layers (each has D·mlp_dim weights)": layers * d * config.mlp_dim,
        "a whole encoder layer (is the layer count off by one?)": (sum(v for k, v in p.items() if k.startswith(("LayerNorms", "qkv", "attention", "MLP")))) // layers,
    }
    return [name for name, size in known.items() if size == abs(difference) and size > 0]


@functools.lru_cache(maxsize=None)
def _built_count(name: str) -> int:
    """vitlib's count, by building the model on the meta device (no memory allocated)."""
    with torch.device("meta"):
        return ReferenceViT(get_config(name)).num_parameters()


@contextlib.contextmanager
def _count_modules_built():
    """Count the nn.Modules constructed inside the block (the exercise asks for a formula, not a model)."""
    built = [0]
    original = nn.Module.__init__

    def counting_init(self, *args, **kwargs):
        built[0] += 1
        original(self, *args, **kwargs)

    nn.Module.__init__ = counting_init
    try:
        yield built
    finally:
        nn.Module.__init__ = original


COUNT_CONFIGS = ("vit_course_28", "vit_ti_16", "vit_b_16", "vit_l_16", "vit_h_14")


@checks.exercise("count_parameters")
def check_count_parameters(count_parameters: Callable[[ViTConfig], int]) -> None:
    """`count_parameters(config)` -> the number of parameters of the ViT `config` describes, by formula."""
    for name in COUNT_CONFIGS:
        config = get_config(name)
        with _count_modules_built() as built:
            got = checks.call_student("count_parameters", count_parameters, config)
        if built[0]:
            checks.fail(
                f"count_parameters({name}) built a model",
                "a count by formula, from the config's numbers only",
                f"{built[0]} nn.Module(s) constructed",
                "count with pencil and paper: sum the sizes of E, x_class, E_pos, the L blocks, the final LayerNorm and the head",
            )
        if isinstance(got, torch.Tensor) and got.numel() == 1 and not torch.is_floating_point(got):
            got = int(got.item())
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            checks.fail(
                f"count_parameters({name})",
                "a Python int",
                f"{type(got).__name__} {got!r}",
                "return an int: use // for divisions (N = (image_size // patch_size) ** 2), never /",
            )
        expected = _built_count(name)
        if int(got) != expected:
            difference = expected - int(got)
            suspects = _suspects(config, difference)
            direction = "too few" if difference > 0 else "too many"
            if suspects:
                hint = f"{abs(difference):,} {direction}: exactly the size of " + "; or ".join(suspects)
                if difference < 0:
                    hint += " (counted twice?)"
            else:
                hint = (
                    f"{abs(difference):,} {direction}, which is no single part: compare each term with "
                    "P²·C·D + D, D, (N+1)·D, L·(4D + 3D² + 3D + D² + D + 2·D·mlp + mlp + D), 2D, D·classes + classes"
                )
            c = config
            checks.fail(
                f"count_parameters({name}): wrong count",
                f"{expected:,} (vitlib's {name}: D={c.hidden_dim}, mlp={c.mlp_dim}, L={c.num_layers}, "
                f"P={c.patch_size}, C={c.in_channels}, N={c.num_patches}, classes={c.num_classes})",
                f"{int(got):,}",
                hint,
            )
    checks.passed("count_parameters", f"equals vitlib's count for {', '.join(COUNT_CONFIGS)}")


# ---------------------------------------------------------------------------------------------
# Exercise 4: torchvision's weights into vitlib's names


def _torchvision_source(seed: int = 7) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
    return _perturb(model, seed=seed).eval()  # its head and class token start at zero


def _pattern(key: str) -> str:
    """One line for all layers: encoder.layers.3.norm1.bias -> encoder.layers.{i}.norm1.bias."""
    return re.sub(r"(layers\.|encoder_layer_|blocks\.)\d+", r"\1{i}", key)


def _listing(keys: list[str], limit: int = 6) -> str:
    keys = list(dict.fromkeys(_pattern(k) for k in keys))
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


@checks.exercise("convert_torchvision_state_dict")
def check_convert_torchvision_state_dict(convert_torchvision_state_dict: Callable[[dict], Mapping[str, torch.Tensor]]) -> None:
    """`convert_torchvision_state_dict(state_dict)` -> a state dict that vitlib.ViT loads."""
    source = _torchvision_source()
    theirs = {k: v.detach().clone() for k, v in source.state_dict().items()}
    given = dict(theirs)
    got = checks.call_student("convert_torchvision_state_dict", convert_torchvision_state_dict, given)
    original = source.state_dict()
    if list(given) != list(theirs) or any(given[k] is not v or not torch.equal(v, original[k]) for k, v in theirs.items()):
        checks.fail(
            "convert_torchvision_state_dict changed the dict it was given",
            f"torchvision's {len(theirs)} keys and tensors, untouched",
            f"{len(given)} keys afterwards" + ("" if list(given) == list(theirs) else ", not the same ones"),
            "build a new dict (converted = {}; converted[new_key] = value) instead of renaming or popping keys of "
            "the state dict you were given: its owner may still need it",
        )
    if not isinstance(got, Mapping):
        checks.fail("convert_torchvision_state_dict", "a dict {vitlib name: tensor}", type(got).__name__, "return the new dict")
    expected = from_torchvision(source).state_dict()
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        sources = [f"{key} <- {_rename(key, _TORCHVISION_NAMES)}" for key in missing]
        checks.fail(
            "converted state dict: its keys are not vitlib.ViT's",
            f"vitlib's keys; missing: {_listing(missing)}" if missing else "vitlib's keys, nothing else",
            f"unexpected keys: {_listing(extra)}" if extra else f"{len(got)} keys, {len(missing)} of vitlib's missing",
            ("rename these (vitlib <- torchvision): " + _listing(sources, 6)) if missing else "drop or rename the keys vitlib.ViT does not have",
        )
    key = "patch_embed.proj.weight"
    conv = theirs["conv_proj.weight"]  # (D, C, P, P)
    d, c, p, _ = conv.shape
    checks.expect_close(
        f"converted {key}",
        got[key],
        expected[key],
        tol=1e-6,
        mistakes={
            "flattened in (c p1 p2) order (conv.reshape(D, -1)): vitlib's patches are flattened (p1 p2 c), "
            "row, column, channel (week 01): rearrange(w, 'd c p1 p2 -> d (p1 p2 c)')": conv.reshape(d, -1),
            "rows and columns of the patch swapped: use rearrange(w, 'd c p1 p2 -> d (p1 p2 c)'), p1 (row) before p2": rearrange(conv, "d c p1 p2 -> d (p2 p1 c)"),
        },
        hint="the conv weight (D, C, P, P) becomes the Linear weight (D, P²·C) in (p1 p2 c) order: rearrange(w, 'd c p1 p2 -> d (p1 p2 c)')",
        shape_hint=f"the conv weight (D, C, P, P) = ({d}, {c}, {p}, {p}) must become a Linear weight (D, P²·C) = ({d}, {p * p * c}): "
        "rearrange(w, 'd c p1 p2 -> d (p1 p2 c)')",
    )
    for key in expected:
        if key == "patch_embed.proj.weight":
            continue
        checks.expect_close(
            f"converted {key}",
            got[key],
            expected[key],
            tol=1e-6,
            hint=f"vitlib's {key} is torchvision's {_rename(key, _TORCHVISION_NAMES)}, copied unchanged",
            shape_hint=f"vitlib's {key} is torchvision's {_rename(key, _TORCHVISION_NAMES)} {tuple(expected[key].shape)}: "
            "are two names swapped (mlp.0 is fc1, mlp.3 is fc2)?",
        )
    checks.passed("convert_torchvision_state_dict", "equals vitlib.interop.from_torchvision on a random torchvision ViT")
