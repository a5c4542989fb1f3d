import torch

from vidllm.models.patches3d import Patch3DEmbedding, SceneFrameHead, rotation_6d_to_matrix, voxel_pool


def test_voxel_pool_averages_per_voxel():
    xyz = torch.tensor([[[0.05, 0.05, 0.05], [0.15, 0.1, 0.1], [0.5, 0.5, 0.5], [9.0, 9.0, 9.0]]])
    tokens = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [7.0, 7.0]]])
    valid = torch.tensor([[True, True, True, False]])
    pooled, centroids, mask = voxel_pool(tokens, xyz, valid, voxel_size=0.2, max_tokens=10)
    assert pooled.shape == (1, 2, 2) and mask.tolist() == [[True, True]]
    assert torch.allclose(pooled[0, 0], torch.tensor([2.0, 1.0]))  # voxel (0,0,0): mean of the first two
    assert torch.allclose(pooled[0, 1], torch.tensor([5.0, 5.0]))
    assert torch.allclose(centroids[0, 0], torch.tensor([0.1, 0.075, 0.075]))


def test_voxel_pool_cap_coarsens_so_the_whole_scene_stays_in_view():
    # A 2 m x 2 m wall sampled every 0.1 m: 100 occupied 0.2 m voxels for a cap of 30.
    grid = torch.arange(20.0) * 0.1 + 0.05
    gx, gz = torch.meshgrid(grid, grid, indexing="ij")
    xyz = torch.stack([gx.flatten(), torch.zeros(400), gz.flatten()], -1)[None]
    tokens = torch.randn(1, 400, 3, requires_grad=True)
    ones = torch.ones(1, 400, dtype=torch.bool)
    pooled, centroids, mask = voxel_pool(tokens, xyz, ones, 0.2, 30, min_tokens=4)
    assert 4 <= mask.sum() <= 30
    # Every point reaches a token (nothing dropped), and the tokens still span the wall.
    pooled[mask].sum().backward()
    assert (tokens.grad.abs().sum(-1) > 0).all()
    assert centroids[0, :, 0].min() < 0.5 and centroids[0, :, 0].max() > 1.5
    # Deterministic whatever the point order.
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    again = voxel_pool(tokens.detach()[:, perm], xyz[:, perm], ones, 0.2, 30, min_tokens=4)
    assert torch.allclose(pooled.detach(), again[0], atol=1e-6)


def test_voxel_pool_cap_keeps_most_supported_voxels_when_coarsening_cannot_fit():
    torch.manual_seed(0)
    # Clusters 100 m apart, beyond any coarsening: 3 points in voxel A, 2 in B, 1 in each of C, D.
    xyz = torch.tensor([[0.1, 0, 0], [0.15, 0.1, 0], [0.05, 0, 0], [100.1, 0, 0], [100.15, 0, 0],
                        [200.1, 0, 0], [300.1, 0, 0]])
    tokens = torch.randn(7, 4)
    pooled, _, mask = voxel_pool(tokens[None], xyz[None], torch.ones(1, 7, dtype=torch.bool), 0.5, 2)
    assert mask.sum() == 2
    assert torch.allclose(pooled[0, 0], tokens[:3].mean(0)) and torch.allclose(pooled[0, 1], tokens[3:5].mean(0))
    perm = torch.randperm(7)
    again, _, _ = voxel_pool(tokens[perm][None], xyz[perm][None], torch.ones(1, 7, dtype=torch.bool), 0.5, 2)
    assert torch.allclose(pooled, again, atol=1e-6)


def test_voxel_pool_batch_padding_and_gradient():
    tokens = torch.randn(2, 5, 3, requires_grad=True)
    xyz = torch.stack([torch.zeros(5, 3), torch.arange(15.0).view(5, 3)])
    valid = torch.ones(2, 5, dtype=torch.bool)
    pooled, _, mask = voxel_pool(tokens, xyz, valid, 0.2, 64)
    assert pooled.shape == (2, 5, 3) and mask.sum(1).tolist() == [1, 5]
    assert (pooled[0, 1:] == 0).all()
    pooled[mask].sum().backward()
    assert torch.allclose(tokens.grad, torch.cat([torch.full((1, 5, 3), 0.2), torch.ones(1, 5, 3)]))


def test_voxel_pool_scene_without_geometry_still_gives_one_token():
    tokens = torch.randn(2, 3, 4)
    xyz = torch.stack([torch.full((3, 3), float("nan")), torch.arange(9.0).view(3, 3)])
    valid = torch.tensor([[True, True, True], [False, False, False]])  # scene 0: non-finite xyz
    pooled, centroids, mask = voxel_pool(tokens, xyz, valid, 0.2, 8, min_tokens=2)
    assert mask.tolist() == [[True], [True]]
    assert torch.allclose(pooled[:, 0], tokens.mean(1)) and (centroids == 0).all()


def test_voxel_pool_refines_degenerate_geometry_up_to_min_tokens():
    # Untrained geometry: 12 patches on one ray 1 cm apart, all inside one 0.2 m voxel.
    xyz = torch.zeros(12, 3)
    xyz[:, 2] = 1.0 + 0.01 * torch.arange(12.0)
    tokens = torch.randn(12, 5)
    ones = torch.ones(1, 12, dtype=torch.bool)
    assert voxel_pool(tokens[None], xyz[None], ones, 0.2, 64)[2].sum() == 1  # no minimum: one token
    pooled, centroids, mask = voxel_pool(tokens[None], xyz[None], ones, 0.2, 64, min_tokens=8)
    assert 8 <= mask.sum() <= 12
    assert (centroids[0, 1:, 2] > centroids[0, :-1, 2]).all()  # key order along the ray
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    again = voxel_pool(tokens[perm][None], xyz[perm][None], ones, 0.2, 64, min_tokens=8)
    assert torch.allclose(pooled, again[0], atol=1e-6) and torch.equal(mask, again[2])
    # The minimum never exceeds the number of points; identical points stay one voxel.
    same = voxel_pool(tokens[None], torch.ones(1, 12, 3), ones, 0.2, 64, min_tokens=8)
    assert same[2].sum() == 1 and torch.allclose(same[0][0, 0], tokens.mean(0))


def test_rotation_6d_is_proper_rotation():
    rot = rotation_6d_to_matrix(torch.randn(10, 6))
    eye = torch.eye(3).expand(10, 3, 3)
    assert torch.allclose(rot.transpose(-1, -2) @ rot, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(10), atol=1e-5)


def test_scene_frame_head_starts_level():
    head = SceneFrameHead(16, 8)
    rot = head(torch.randn(2, 3, 4, 16))
    assert rot.shape == (2, 3, 3)
    level = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # cam x→x, y(down)→−z, z(fwd)→y
    assert torch.allclose(rot, level.expand(2, 3, 3), atol=0.1)


def test_patch3d_embedding_adds_position():
    emb = Patch3DEmbedding(8)
    tokens = torch.randn(2, 3, 4, 8)
    out = emb(tokens, torch.randn(2, 3, 4, 3))
    assert out.shape == tokens.shape
    assert not torch.allclose(out, emb(tokens, torch.randn(2, 3, 4, 3)))
