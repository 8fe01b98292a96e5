import pytest
import torch

from edgeprune import data, models
from edgeprune.errors import ConfigError, DataError
from edgeprune.train import TrainConfig, evaluate, predict, train
from edgeprune.types import InputSpec


@pytest.fixture(scope="module")
def tiny_data():
    src = data.open("shapes", labels=True, limit=256)
    mean, std = data.channel_stats(src)
    return src, InputSpec(mean=mean, std=std, class_names=src.class_names)


def test_training_reduces_loss_and_leaves_the_input_model_alone(tiny_data):
    _, spec = tiny_data
    digits = data.open("digits", labels=True, limit=256)
    torch.manual_seed(0)
    model = models.create("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train(model, digits, input_spec=spec,
                config=TrainConfig(epochs=4, batch_size=32, lr=0.05, augment=False, seed=0))
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert res.model is not model and not res.model.training


def test_training_is_reproducible(tiny_data):
    src, spec = tiny_data
    from tests.nets import TinyNet

    cfg = TrainConfig(epochs=1, batch_size=64, seed=3)
    torch.manual_seed(0)
    model = TinyNet()
    a = train(model, src, input_spec=spec, config=cfg)
    b = train(model, src, input_spec=spec, config=cfg)
    assert a.history == b.history
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_evaluate_accuracy_and_agreement(tiny_data):
    src, spec = tiny_data
    m = models.create("resnet20").eval()
    r = evaluate(m, src, input_spec=spec, reference=m)
    assert r.agreement == 1.0 and r.images == 256
    logits, labels = predict(m, src, input_spec=spec)  # top-1 is the share of correct argmaxes
    assert r.top1 == float((logits.argmax(1) == labels).mean())
    # a model that always predicts class 0 scores exactly the share of class 0
    class Const(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[:, 0] = 1
            return out
    r0 = evaluate(Const(), src, input_spec=spec)
    assert r0.top1 == pytest.approx(float((src.labels_array() == 0).mean()))


def test_training_needs_labels(tiny_data):
    _, spec = tiny_data
    with pytest.raises(DataError, match="needs labels"):
        train(models.create("resnet20"), data.open("shapes", limit=8), input_spec=spec)


def test_distillation_reads_no_label_and_moves_the_student_to_the_teacher(tiny_data):
    """With a teacher, training needs no labels (the data is opened without them) and the
    student's agreement with the teacher rises; the teacher's own labels-free targets are the
    only signal (its predictions differ from the true labels, and the student follows it)."""
    from tests.nets import TinyNet

    src, spec = tiny_data
    unlabeled = data.open("shapes", limit=256)
    torch.manual_seed(0)
    teacher = TinyNet().eval()  # random: its argmax is far from the true labels
    student = TinyNet()
    before = evaluate(student, src, input_spec=spec, reference=teacher)
    res = train(student, unlabeled, input_spec=spec, teacher=teacher,
                config=TrainConfig(epochs=6, batch_size=32, lr=0.05, augment=False, seed=0))
    after = evaluate(res.model, src, input_spec=spec, reference=teacher)
    assert after.agreement > before.agreement + 0.2, (before, after)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    with pytest.raises(ConfigError, match="tau=0"):
        train(student, unlabeled, input_spec=spec, teacher=teacher, tau=0)


def test_too_few_outputs(tiny_data):
    src, spec = tiny_data
    with pytest.raises(ConfigError, match="num_classes=10"):
        train(models.create("resnet20", num_classes=3), src, input_spec=spec)


def test_config_validation_and_round_trip():
    cfg = TrainConfig(epochs=3, lr=0.05)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown TrainConfig keys \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="epochs=0"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="lr=-1"):
        TrainConfig(lr=-1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the refusal is for one without")
def test_cuda_refused_where_there_is_none(tiny_data):
    src, spec = tiny_data
    with pytest.raises(ConfigError, match="device='cuda' is not available"):
        train(models.create("resnet20"), src, input_spec=spec, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_returns_a_cpu_model(tiny_data):
    src, spec = tiny_data
    res = train(models.create("resnet20"), src, input_spec=spec,
                config=TrainConfig(epochs=1, batch_size=64), device="cuda")
    assert all(p.device.type == "cpu" for p in res.model.parameters())
    logits, labels = predict(res.model, src, input_spec=spec)
    assert evaluate(res.model, src, input_spec=spec).top1 == float((logits.argmax(1) == labels).mean())
