import torch

from arvision.tokenizers.rq_vision_tower import RQVisionTower
from arvision.training.rq_vision_tower import TowerLossWeights, siglip_sigmoid_loss
from arvision.training.vila_u_task import TowerObjective
from vilau_common import tiny_tower_config


def test_sigmoid_loss_prefers_matched_pairs():
    emb = torch.eye(4, 8)
    scale, bias = torch.tensor([2.3]), torch.tensor([-1.0])
    matched = siglip_sigmoid_loss(emb, emb, scale, bias)
    shuffled = siglip_sigmoid_loss(emb, emb[[1, 2, 3, 0]], scale, bias)
    assert matched < shuffled
    # Hand check of one pair's term: -log sigmoid(+logit) on the diagonal, -log sigmoid(-logit) off it.
    logits = scale.exp() + bias
    expected = -(torch.nn.functional.logsigmoid(logits) + 3 * torch.nn.functional.logsigmoid(-bias)).squeeze()
    torch.testing.assert_close(matched, expected)


def test_tower_step_lowers_the_loss_updates_codebooks_and_keeps_text_frozen():
    torch.manual_seed(0)
    tower = RQVisionTower(tiny_tower_config())
    pixels = torch.rand(4, 3, 16, 16) * 2 - 1
    text_ids = torch.randint(0, 50, (4, 8))
    text_before = {k: v.clone() for k, v in tower.siglip.text_model.state_dict().items()}
    scale_before = tower.logit_scale.detach().clone()
    codebook_before = tower.quantizer.codebooks[0].weight.clone()
    objective = TowerObjective(tower, TowerLossWeights(), train_encoder=True)  # `arvision train vila-u-tower`'s
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-3)

    def step() -> tuple[float, dict]:
        loss, logs = objective(pixels, text_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item(), logs

    first, first_logs = step()
    for _ in range(8):
        last, last_logs = step()
    assert last < first
    assert last_logs["pixel"] < first_logs["pixel"]
    assert not torch.equal(codebook_before, tower.quantizer.codebooks[0].weight)
    assert all(torch.equal(v, text_before[k]) for k, v in tower.siglip.text_model.state_dict().items())
    assert torch.equal(scale_before, tower.logit_scale.detach())
