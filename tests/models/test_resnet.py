import pytest
import torch

from cifarlab import CifarlabError
from cifarlab.models import count_macs, count_params, create, list_models, register_model
from cifarlab.models.registry import _REGISTRY


# He et al. 2016 (Deep Residual Learning), CIFAR ResNets: ResNet-20 with 100 classes, option A / B; ResNet-56
# (and the published param counts)
@pytest.mark.parametrize("name,shortcut,params,macs", [
    ("resnet20", "A", 275_572, 40_556_800),
    ("resnet20", "B", 278_324, 40_818_944),
    ("resnet56", "A", 858_868, 125_491_456),
    ("resnet56", "B", 861_620, 125_753_600),
])
def test_resnet_params_and_macs_match_the_paper(name, shortcut, params, macs):
    m = create(name, shortcut=shortcut)
    assert count_params(m) == params
    assert count_macs(m) == macs
    assert round(macs / 1e6, 2) == {40_556_800: 40.56, 40_818_944: 40.82, 125_491_456: 125.49,
                                    125_753_600: 125.75}[macs]


def _closed_form_resnet_macs(n: int, num_classes: int = 100, option_b: bool = False) -> int:
    """Sum over convs: k*k*Cin*Cout*H*W, plus the linear head."""
    macs = 9 * 3 * 16 * 32 * 32
    cin = 16
    for w, hw in ((16, 32), (32, 16), (64, 8)):
        for _ in range(n):
            macs += 9 * cin * w * hw * hw + 9 * w * w * hw * hw
            if option_b and cin != w:
                macs += cin * w * hw * hw
            cin = w
    return macs + 64 * num_classes


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_macs_closed_form_all_depths(depth):
    n = (depth - 2) // 6
    assert count_macs(create(f"resnet{depth}")) == _closed_form_resnet_macs(n)
    assert count_macs(create(f"resnet{depth}", shortcut="B")) == _closed_form_resnet_macs(n, option_b=True)


def test_wide_resnet18():
    m = create("resnet18")
    assert count_params(m) == 11_220_132
    feats = m.forward_features(torch.zeros(1, 3, 32, 32))
    assert feats.shape == (1, 512, 4, 4)


def test_option_a_shortcut_is_parameter_free_zero_padding():
    m = create("resnet20").eval()
    block = m.stages[1][0]
    x = torch.randn(1, 16, 32, 32)
    s = block.shortcut(x)
    assert s.shape == (1, 32, 16, 16)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2]) and s[:, :8].abs().sum() == 0 and s[:, 24:].abs().sum() == 0


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", "gem"])
@pytest.mark.parametrize("act", ["relu", "gelu", "elu", "silu"])
def test_switches(pool, act):
    m = create("resnet20", global_pool=pool, act=act, num_classes=10)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(CifarlabError, match="did you mean .*resnet20"):
        create("resnet21")
    with pytest.raises(CifarlabError, match="unknown activation"):
        create("resnet20", act="tanhh")


def test_users_can_register_their_own_network():
    from cifarlab.models.resnet import resnet

    try:
        register_model(resnet, name="my_resnet8", family="mine", paper="Mine (2026)", tier="small",
                       arch="n=1", depth=8)
        assert "my_resnet8" in list_models(family="mine")
        assert create("my_resnet8")(torch.randn(1, 3, 32, 32)).shape == (1, 100)
        with pytest.raises(ValueError, match="already registered"):
            register_model(resnet, name="my_resnet8", family="mine", paper="x", tier="small")
    finally:
        _REGISTRY.pop("my_resnet8", None)
