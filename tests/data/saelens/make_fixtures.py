"""Write the SAELens-format test SAEs of this folder with SAELens itself, and what SAELens computes on them.

Not part of the test suite (it needs ``sae-lens``, which the project does not depend on). Run once,
in a separate environment, and commit the output::

    python3 -m venv /tmp/saelens-venv
    echo "$(python -c 'import site; print(site.getsitepackages()[0])')" > /tmp/saelens-venv/lib/python3.11/site-packages/project.pth
    /tmp/saelens-venv/bin/pip install sae-lens==6.54.12        # installs into the venv, changes nothing else
    /tmp/saelens-venv/bin/python tests/data/saelens/make_fixtures.py

Each folder holds ``cfg.json`` and ``sae_weights.safetensors`` written by SAELens' ``SAE.save_model``
(plus ``activation_scaler.json`` written by SAELens' ``ActivationScaler.save`` for
``expected_average_only_in``) and ``expected_outputs.safetensors`` with a fixed input ``x [64, 16]``,
``feature_acts = sae.encode(x)`` and ``sae_out = sae.decode(feature_acts)``, both computed by SAELens
(for ``expected_average_only_in`` as SAELens' evals do: ``scaler.scale`` before, ``scaler.unscale`` after).
The weights are random, with non-zero biases and thresholds so that every term of the forward pass matters.
"""

from pathlib import Path

import sae_lens
import torch
from safetensors.torch import save_file
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.training.activation_scaler import ActivationScaler

D_IN, D_SAE, N = 16, 48, 64
HERE = Path(__file__).resolve().parent


def randomise(sae, g, threshold=False):
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=g) / D_IN ** 0.5)
        sae.W_dec.copy_(torch.randn(D_SAE, D_IN, generator=g) * (0.5 + torch.rand(D_SAE, 1, generator=g)))
        sae.b_enc.copy_(0.3 * torch.randn(D_SAE, generator=g))
        sae.b_dec.copy_(torch.randn(D_IN, generator=g))
        if threshold:
            sae.threshold.copy_(0.2 + 0.6 * torch.rand(D_SAE, generator=g))


def write(name, sae, x, scaler=None):
    folder = HERE / name
    sae.save_model(folder)
    with torch.no_grad():
        xin = scaler.scale(x) if scaler else x
        feature_acts = sae.encode(xin)
        sae_out = sae.decode(feature_acts)
        if scaler:
            sae_out = scaler.unscale(sae_out)
            scaler.save(str(folder / "activation_scaler.json"))
    assert (feature_acts > 0).any(1).all() and (feature_acts == 0).any(), name  # sparse, never all-zero
    save_file({"x": x.contiguous(), "feature_acts": feature_acts.contiguous(), "sae_out": sae_out.contiguous()},
              folder / "expected_outputs.safetensors")
    print(name, "L0 =", float((feature_acts > 0).float().sum(1).mean()))


def main():
    print("sae_lens", sae_lens.__version__, "torch", torch.__version__)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(N, D_IN, generator=g) + torch.randn(D_IN, generator=g)

    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=True))
    randomise(sae, g)
    write("standard-bdec-d16-n48", sae, x)

    sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6, rescale_acts_by_decoder_norm=True,
                                apply_b_dec_to_input=True))
    randomise(sae, g)
    write("topk-rescaled-d16-n48", sae, x)

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=True,
                                        normalize_activations="constant_norm_rescale"))
    randomise(sae, g, threshold=True)
    write("jumprelu-constnorm-d16-n48", sae, x)

    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False,
                                        normalize_activations="layer_norm"))
    randomise(sae, g)
    write("standard-layernorm-d16-n48", sae, x)

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=True,
                                        normalize_activations="expected_average_only_in"))
    randomise(sae, g, threshold=True)
    scaler = ActivationScaler(scaling_factor=0.37)
    write("jumprelu-expavg-d16-n48", sae, x, scaler)


if __name__ == "__main__":
    main()
