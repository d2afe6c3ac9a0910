"""Loss functions shared by methods. Each cites its paper and states its formula.

Distributed gathers are not done here: callers pass already-gathered tensors
(``harness.gather_with_grad``), so no loss does its own reduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness import align_loss, uniform_loss


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR; Chen et al., 2020), over the 2N views of N pairs.

    With z the 2N L2-normalised embeddings, s_ij = z_i . z_j / tau and positive p(i):

        L = 1/(2N) sum_i -log( exp(s_{i,p(i)}) / sum_{k != i} exp(s_ik) )
    """
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float, queue: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE (van den Oord et al., 2018; MoCo, He et al., 2020).

    For normalised queries q_i, their positive keys k_i and negatives n_j (the other keys in
    the batch when ``queue`` is None, else the queue):

        L = 1/N sum_i -log( exp(q_i.k_i / tau) / (exp(q_i.k_i / tau) + sum_j exp(q_i.n_j / tau)) )
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    if queue is None:
        logits = q @ k.t() / temperature
        target = torch.arange(q.shape[0], device=q.device)
    else:
        pos = (q * k).sum(dim=1, keepdim=True)
        neg = q @ queue.float().t()
        logits = torch.cat([pos, neg], dim=1) / temperature
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al., 2020): 2 - 2 cos(p, sg(z)), averaged over the batch.

    (SimSiam's -cos(p, sg(z)) differs by an affine map: (this - 2) / 2.)
    """
    p = F.normalize(p.float(), dim=1)
    z = F.normalize(z.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """BYOL's symmetrised loss (Grill et al., 2020), eq. 2 plus its mirror.

    With predictions p_v = q(g(f(x_v))) of the online network and target projections
    z'_v = g'(f'(x_v)) (no gradient):

        L = [2 - 2 cos(p1, sg(z'2))] + [2 - 2 cos(p2, sg(z'1))],  each term averaged over the batch
    """
    return negative_cosine(p1, z2) + negative_cosine(p2, z1)


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True,
             eps: float = 1e-6) -> torch.Tensor:
    """MAE reconstruction loss (He et al., 2022): MSE on the masked patches only.

    ``pred`` and ``target`` are (B, L, P) per-patch pixel vectors, ``mask`` is (B, L) with 1 for
    a masked (removed) patch. With ``norm_pix`` the target of each patch is normalised by its own
    mean and variance, t_hat = (t - mean(t)) / sqrt(var(t) + eps), var being the unbiased
    variance over the patch's P values (torch's default, as in the paper's code):

        L = sum_{b,l} m_bl * mean_p (pred_blp - t_hat_blp)^2 / sum_{b,l} m_bl
    """
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def rotation_targets(batch: int, n_rotations: int = 4, device=None) -> torch.Tensor:
    """Labels for a batch stacked as [all images rotated by 0, by 90, by 180, by 270 degrees]."""
    return torch.arange(n_rotations, device=device).repeat_interleave(batch)


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam's symmetrised loss (Chen & He, 2021), eq. 2.

    With predictions p_v = h(f(x_v)) and projections z_v = f(x_v), D(p, z) = -cos(p, sg(z)):

        L = 1/2 D(p1, z2) + 1/2 D(p2, z1),  each term averaged over the batch (minimum -1)
    """
    def d(p, z):
        return -(F.normalize(p.float(), dim=1) * F.normalize(z.detach().float(), dim=1)).sum(dim=1).mean()

    return 0.5 * d(p1, z2) + 0.5 * d(p2, z1)


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny, 2021), eq. 1-2.

    Each embedding dimension is standardised along the batch (N samples; biased variance, as
    the paper's affine-free BatchNorm: z_hat = (z - mean) / sqrt(var + eps)); the
    cross-correlation of the two views is C_ij = sum_b z_hat^A_bi z_hat^B_bj / N and

        L = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2

    Under DDP pass the gathered batch (``gather_with_grad``), so C sums over the global batch.
    """
    def standardise(z):
        z = z.float()
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)

    n = z_a.shape[0]
    with torch.autocast(z_a.device.type, enabled=False):   # C_ii near 1: bf16's 8-bit mantissa is too coarse
        c = standardise(z_a).t() @ standardise(z_b) / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def symmetric_info_nce(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float,
                       queue: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of each view's query against the other view's key, summed (MoCo v3, SimCLR v2):

        L = InfoNCE(q1, k2) + InfoNCE(q2, k1)

    (``info_nce``: in-batch negatives, or the ``queue`` as negatives when given.)
    """
    return info_nce(q1, k2, temperature, queue) + info_nce(q2, k1, temperature, queue)


def moco_v3_loss(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3 (Chen, Xie & He, 2021), Algorithm 1: symmetric InfoNCE over the batch, with the
    other images' keys as negatives, scaled by 2 tau as in the paper's code:

        L = 2 tau [ctr(q1, k2) + ctr(q2, k1)],
        ctr(q, k) = 1/N sum_i -log( exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau) )

    q, k L2-normalised; keys carry no gradient. Pass gathered tensors under DDP.
    """
    return 2 * temperature * symmetric_info_nce(q1, q2, k1.detach(), k2.detach(), temperature)


def _cross_view_cross_entropy(targets: list[torch.Tensor], logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Mean over pairs (t, s), s != t, of -sum_k targets[t]_k log softmax(logits[s] / tau)_k."""
    logp = [F.log_softmax(x.float() / temperature, dim=-1) for x in logits]
    total, pairs = 0.0, 0
    for t, q in enumerate(targets):
        q = q.detach().float()
        for s, lp in enumerate(logp):
            if s == t:
                continue
            total = total + (-(q * lp).sum(dim=-1)).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("cross-view cross-entropy needs at least two views")
    return total / pairs


def dino_loss(teacher_probs: list[torch.Tensor], student_logits: list[torch.Tensor], student_temperature: float = 0.1) -> torch.Tensor:
    """DINO self-distillation (Caron et al., 2021), eq. 3 and Algorithm 1.

    ``teacher_probs`` are P_t(x) = softmax((g_t(x) - c) / tau_t) of the global crops
    (``harness.Centering``, no gradient), ``student_logits`` g_s(x') of every crop, the
    global crops first in the same order. With P_s = softmax(g_s / tau_s):

        L = mean over (x in globals, x' in all crops, x' != x) of  -sum_k P_t(x)_k log P_s(x')_k
    """
    return _cross_view_cross_entropy(teacher_probs, student_logits, student_temperature)


def swav_loss(codes: list[torch.Tensor], scores: list[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped prediction (Caron et al., 2020), eq. 1-2, with multi-crop.

    ``codes`` q_t (Sinkhorn-Knopp, no gradient) of the crops used for assignment (the global
    ones, first in ``scores``); ``scores`` z_s^T c_k of every crop against the normalised
    prototypes. With p_s = softmax(z_s^T C / tau):

        L = mean over (t in assigned crops, s in all crops, s != t) of  -sum_k q_t,k log p_s,k
    """
    return _cross_view_cross_entropy(codes, scores, temperature)


# ----------------------------------------------------------------------------- two-view contrastive losses
# (nce, debiased, hard_negatives, flatnce, invaspread, align_uniform). Each takes the projections
# z1, z2 (N, D) of two views of N images (row i of z1 and of z2: the same image), normalises them,
# and arranges the 2N views as SimCLR does: anchor i's positive is the other view p(i) of its image,
# its negatives the other 2N - 2 views.


def pair_similarities(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities of the 2N views of N pairs, in SimCLR's arrangement (no temperature).

    With z = normalise([z1; z2]) and p(i) = (i + N) mod 2N: ``pos`` (2N,) holds z_i . z_p(i), and
    ``neg`` (2N, 2N - 2) holds z_i . z_k for every k not in {i, p(i)}, in increasing order of k.
    """
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
    n2 = z.shape[0]
    sim = z @ z.t()
    idx = torch.arange(n2, device=z.device)
    partner = (idx + n2 // 2) % n2
    keep = torch.ones(n2, n2, dtype=torch.bool, device=z.device)
    keep[idx, idx] = False
    keep[idx, partner] = False
    return sim[idx, partner], sim[keep].view(n2, n2 - 2)


def nce_loss(pos_logits: torch.Tensor, noise_logits: torch.Tensor, log_z, num_data: int) -> torch.Tensor:
    """Noise-contrastive estimation (Gutmann & Hyvarinen, 2010) as Wu et al., 2018 (InstDisc /
    NPID, eqs. 5-6) use it to approximate the non-parametric softmax.

    A sample with score s (``*_logits`` = s / tau) has model density P(x) = exp(s / tau) / Z; the
    noise distribution is uniform over the n = ``num_data`` instances, P_n = 1/n, and M =
    ``noise_logits.shape[-1]`` noise samples accompany each of the B data samples. The posterior
    that a sample came from the data, not the noise, is

        h(x) = P(x) / (P(x) + M * P_n) = sigmoid(s / tau - log Z - log(M / n))

    and the loss is binary logistic regression of data against noise:

        L = -1/B sum_b [ log h(x_b) + sum_{j=1..M} log(1 - h(x~_bj)) ]

    ``log_z`` is log Z (float or tensor broadcastable to the logits); Wu et al. estimate Z once,
    from the first batch (:func:`nce_log_partition`), and keep it fixed.
    """
    import math

    m = noise_logits.shape[-1]
    shift = torch.as_tensor(log_z, dtype=torch.float32, device=pos_logits.device) + math.log(m / num_data)
    data_term = F.logsigmoid(pos_logits.float() - shift)               # log h(x)
    noise_term = F.logsigmoid(shift - noise_logits.float()).sum(-1)    # sum_j log(1 - h(x~_j))
    return -(data_term + noise_term).mean()


def nce_log_partition(noise_logits: torch.Tensor, num_data: int) -> torch.Tensor:
    """Wu et al.'s Monte-Carlo estimate of the partition function from noise samples (no gradient):
    Z ~= n * mean_j exp(s_j / tau); returns log Z."""
    import math

    x = noise_logits.detach().float().flatten()
    return torch.logsumexp(x, 0) - math.log(x.numel()) + math.log(num_data)


def _debiased_infonce(pos: torch.Tensor, neg: torch.Tensor, temperature: float, tau_plus: float,
                      beta: float) -> torch.Tensor:
    """-log(e^pos / (e^pos + N g)) with DCL/HCL's estimator g; pos (A,), neg (A, N) are logits s/tau.

    Computed with every exponential shifted by the row's largest logit m (the shift cancels):
    exp(-1/tau) becomes exp(-1/tau - m)."""
    n = neg.shape[1]
    m = torch.maximum(pos, neg.max(dim=1).values).detach()
    e_pos = torch.exp(pos - m)
    e_neg = torch.exp(neg - m[:, None])
    w = torch.softmax(beta * neg, dim=1)   # importance weights over the negatives; uniform 1/N for beta = 0
    neg_mean = (w * e_neg).sum(dim=1)
    g = (neg_mean - tau_plus * e_pos) / (1 - tau_plus)
    g = torch.maximum(g, torch.exp(-1.0 / temperature - m))
    return (torch.log(e_pos + n * g) - (pos - m)).mean()


def debiased_contrastive(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
                         tau_plus: float = 0.1) -> torch.Tensor:
    """Debiased contrastive loss (Chuang, Robinson, Lin, Torralba & Jegelka, 2020, "Debiased
    Contrastive Learning", eq. 6; not Yeh et al.'s Decoupled CL).

    Some "negatives" share the anchor's latent class (prior eta+ = ``tau_plus``, eta- = 1 - eta+).
    For anchor i with positive similarity s+ and the N = 2N_img - 2 negative similarities s-_k
    (cosines; :func:`pair_similarities`), the negative term is estimated as

        g = max( (1/eta-) * ( mean_k exp(s-_k / tau) - eta+ * mean_pos exp(s+ / tau) ), exp(-1/tau) )

    (one positive per anchor, so mean_pos is exp(s+ / tau) itself), and, averaged over the 2N anchors,

        L = -log( exp(s+ / tau) / (exp(s+ / tau) + N * g) )

    ``tau_plus = 0`` gives SimCLR's NT-Xent (up to the clamp). Defaults: tau = 0.5, eta+ = 0.1
    (the paper's CIFAR-10 setting).
    """
    pos, neg = pair_similarities(z1, z2)
    return _debiased_infonce(pos / temperature, neg / temperature, temperature, tau_plus, 0.0)


def hard_negative_contrastive(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, beta: float = 1.0,
                              tau_plus: float = 0.1) -> torch.Tensor:
    """Hard-negative contrastive loss (Robinson, Chuang, Sra & Jegelka, 2021, "Contrastive Learning
    with Hard Negative Samples", HCL).

    Negatives are drawn from q_beta(x-) ~ exp(beta * f(x)^T f(x-)) p(x-), realised by importance
    weights over the N negatives of each anchor, normalised to mean 1:

        w_k = exp(beta * s-_k / tau) / mean_l exp(beta * s-_l / tau)

    (beta multiplies s/tau, as in the authors' code; the weights are not detached, as there), and
    combined with the debiasing of :func:`debiased_contrastive`:

        g = max( (1/eta-) * ( mean_k w_k exp(s-_k / tau) - eta+ * exp(s+ / tau) ), exp(-1/tau) )
        L = -log( exp(s+ / tau) / (exp(s+ / tau) + N * g) )

    ``beta = 0`` gives :func:`debiased_contrastive`. Defaults: beta = 1, eta+ = 0.1, tau = 0.5.
    """
    pos, neg = pair_similarities(z1, z2)
    return _debiased_infonce(pos / temperature, neg / temperature, temperature, tau_plus, beta)


def flatnce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """FlatNCE (Chen, Luo, Li, Qian, Dong & Carin, 2021, "Simpler, Faster, Stronger: Breaking the
    log-K Curse on Contrastive Learners with FlatNCE").

    For anchor i with positive similarity s+ and negatives s-_k, the stop-gradient trick

        l_i = logsumexp_k((s-_k - s+) / tau);   L = mean_i [ l_i - sg(l_i) ]

    has value 0 and the gradient of InfoNCE = log(1 + exp(l_i)) rescaled by 1 / (1 - p+_i)
    (p+ = the positive's softmax probability): the positive drops out of the normaliser, so small
    batches, where InfoNCE's value is log(1 + tiny), do not lose the gradient to floating-point
    cancellation. (The authors' code returns exp(l - sg(l)), value 1, same gradient.) The value says
    nothing about progress: methods should log InfoNCE (e.g. ``nt_xent``) beside it.
    """
    pos, neg = pair_similarities(z1, z2)
    lse = torch.logsumexp((neg - pos[:, None]) / temperature, dim=1)
    return (lse - lse.detach()).mean()


def invaspread_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Invariant and spreading instance feature loss (Ye, Zhang, Yuen & Chang, 2019,
    "Unsupervised Embedding Learning via Invariant and Spreading Instance Feature", eq. 6).

    The 2N normalised views of N images; the probability that view k is recognised as instance i
    is a softmax over the other views,

        P_ik = exp(z_i . z_k / tau) / sum_{l != i} exp(z_i . z_l / tau)

    and the loss rewards recognising the other view p(i) of the same image and *not* recognising
    any view of another image (independent binary decisions, as in the NCE of Wu et al.):

        L = -1/(2N) sum_i [ log P_{i,p(i)} + sum_{k not in {i, p(i)}} log(1 - P_ik) ]

    (The authors' code uses this symmetric 2N-anchor form and detaches the right-hand factor of
    each dot product; here gradients flow through both.) Default tau = 0.1.
    """
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
    n2 = z.shape[0]
    idx = torch.arange(n2, device=z.device)
    partner = (idx + n2 // 2) % n2
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(n2, dtype=torch.bool, device=z.device), float("-inf"))
    logp = torch.log_softmax(logits, dim=1)
    neg_mask = torch.ones(n2, n2, dtype=torch.bool, device=z.device)
    neg_mask[idx, idx] = False
    neg_mask[idx, partner] = False
    log1m = torch.log(-torch.expm1(logp.clamp(max=-1e-7)))   # log(1 - P), stable as P -> 1
    neg_term = torch.where(neg_mask, log1m, torch.zeros_like(log1m)).sum(dim=1)
    return -(logp[idx, partner] + neg_term).mean()


def align_uniform_loss(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0, t: float = 2.0,
                       lam: float = 1.0) -> torch.Tensor:
    """Alignment + uniformity as a training loss (Wang & Isola, 2020, "Understanding Contrastive
    Representation Learning through Alignment and Uniformity on the Hypersphere").

    On normalised features x = f(view 1), y = f(view 2) of N positive pairs, with the evaluator's
    functions (the same code scores every method):

        L = L_align(x, y; alpha) + lam * (L_uniform(x; t) + L_uniform(y; t)) / 2
        L_align = mean_i ||x_i - y_i||^alpha,   L_uniform(x) = log mean_{i<j} exp(-t ||x_i - x_j||^2)

    (the paper's reference code; the functions of ``harness.core.hypersphere``). Defaults alpha = 2, t = 2, lam = 1.
    """
    x = F.normalize(z1.float(), dim=1)
    y = F.normalize(z2.float(), dim=1)
    return align_loss(x, y, alpha) + lam * (uniform_loss(x, t) + uniform_loss(y, t)) / 2


def counting_loss(phi_down_x: torch.Tensor, phi_tiles_x: torch.Tensor, phi_down_y: torch.Tensor,
                  margin: float = 10.0) -> torch.Tensor:
    """The counting loss (Noroozi, Pirsiavash & Favaro, 2017, eq. 5), averaged over the batch.

    phi counts visual primitives (features after a ReLU). For an image x, its 2x downsampled
    version D∘x and its four tiles T_i∘x must hold the same counts; for another image y the counts
    of D∘y must differ from x's by at least the margin c (the contrastive term rules out phi = 0):

        L = ||phi(D∘x) - sum_i phi(T_i∘x)||^2 + max(0, c - ||phi(D∘y) - sum_i phi(T_i∘x)||^2)

    ``phi_tiles_x`` is (B, 4, D), the other two (B, D).
    """
    total = phi_tiles_x.float().sum(dim=1)
    pos = (phi_down_x.float() - total).pow(2).sum(dim=1)
    neg = (phi_down_y.float() - total).pow(2).sum(dim=1)
    return (pos + F.relu(margin - neg)).mean()


def weighted_soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy with a soft target distribution per row and an optional weight per row
    (Zhang et al., 2016, eq. 2: L = -sum_pixels v(Z) sum_q Z_q log Ẑ_q), averaged over rows.
    ``logits`` and ``target`` are (N, Q), ``weight`` (N,)."""
    ce = -(target.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if weight is not None:
        ce = ce * weight.float()
    return ce.mean()


def supervised_contrastive(z: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised-contrastive loss over normalised features (Khosla et al., 2020, L_out), with
    "same group" as positives: for anchor i with positives P(i) (same group, i excluded) and all
    others A(i) = {k != i},

        L = 1/N sum_i -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) )

    Jigsaw Clustering's clustering loss: tiles cut from one image form a group. Anchors with no
    positive are skipped."""
    z = F.normalize(z.float(), dim=1)
    sim = z @ z.t() / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (groups.view(-1, 1) == groups.view(1, -1)) & ~eye
    n_pos = pos.sum(1)
    keep = n_pos > 0
    mean_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)[keep] / n_pos[keep]
    return -mean_pos.mean()


def cosine_classifier_logits(features: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine-softmax logits (PIC, Cao et al., 2020): cos(f_i, w_j) / tau for normalised features and
    normalised class (instance) weights; feed them to cross-entropy."""
    return F.normalize(features.float(), dim=1) @ F.normalize(weight.float(), dim=1).t() / temperature


def simmim_loss(pred: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """SimMIM's reconstruction loss (Xie et al., 2022, eq. 1): L1 on the masked pixels only,

        L = sum_{c,h,w} m_hw |x_hat_chw - x_chw| / (sum_{h,w} m_hw + eps) / C

    ``pred``, ``target``: (B, C, H, W); ``pixel_mask``: (B, 1, H, W) (or (B, H, W)), 1 where masked."""
    m = pixel_mask.float()
    if m.dim() == 3:
        m = m.unsqueeze(1)
    l1 = (pred.float() - target.float()).abs()
    return (l1 * m).sum() / (m.sum() + eps) / pred.shape[1]


def ibot_patch_loss(teacher_probs: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor,
                    student_temperature: float = 0.1) -> torch.Tensor:
    """iBOT's masked-patch self-distillation (Zhou et al., 2022, eq. 2), for one global crop:

        L = mean_b [ sum_{i masked in b} -sum_k P_t(u_i)_k log P_s(u^_i)_k / max(1, #masked in b) ]

    ``teacher_probs`` (B, L, K): the teacher's centred, sharpened patch distributions of the
    un-masked view; ``mask`` (B, L), 1 where the student's patch was masked; ``student_logits``: the
    student's patch outputs of the masked view, either all of them (B, L, K) or only the masked
    positions' rows (M, K), M = mask.sum(), in ``mask``'s row-major order (what ``x[mask.bool()]``
    gives; only these rows enter the loss). Images without masked patches add 0."""
    m = mask.bool()
    if student_logits.dim() == 3:
        student_logits = student_logits[m]
    elif student_logits.shape[0] != int(m.sum()):                 # rows handed in: one per masked patch
        raise ValueError(f"ibot_patch_loss: {student_logits.shape[0]} student rows for {int(m.sum())} masked patches")
    per_image = m.sum(1, keepdim=True).clamp(min=1).expand_as(m)[m]                        # (M,) #masked in b
    ce = -(teacher_probs[m] * F.log_softmax(student_logits.float() / student_temperature, dim=-1)).sum(-1)   # (M,)
    return (ce / per_image).sum() / m.shape[0]


def cmc_loss(z: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Contrastive Multiview Coding's full graph with in-batch negatives (Tian, Krishnan & Isola,
    2019, eqs. 2-3 and Section 3.3): for views V_1..V_M of the same N images, with z_i the
    L2-normalised features of view i (N, D) and s = cosine,

        L(V_i, V_j) = 1/N sum_n -log( exp(s(z_i^n, z_j^n) / tau) / sum_k exp(s(z_i^n, z_j^k) / tau) )
        L = sum_{i < j} [ L(V_i, V_j) + L(V_j, V_i) ]

    (anchors from one view, candidates, the positive among them, from the other; both directions
    of every pair: for M = 2, L = L(V_1, V_2) + L(V_2, V_1), the authors' ``l_loss + ab_loss``).
    Pass gathered tensors under DDP."""
    if len(z) < 2:
        raise ValueError(f"cmc_loss needs at least 2 views, got {len(z)}")
    total = z[0].new_zeros((), dtype=torch.float32)
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            total = total + symmetric_info_nce(z[i], z[j], z[i], z[j], temperature)
    return total


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
              max_logit_scale: float = 100.0) -> torch.Tensor:
    """CLIP's symmetric contrastive loss (Radford et al., 2021, Fig. 3), over N (image, text) pairs.

    With I, T the (N, D) L2-normalised image and text embeddings (row i of each is one pair), the
    learnable log-temperature t (``logit_scale``) and s = min(exp(t), max_logit_scale) (the paper
    clips the logit scale at 100):

        logits = s * I T^T,   L = ( CE(logits, [0..N-1]) + CE(logits^T, [0..N-1]) ) / 2

    the mean of the image->text and text->image cross-entropies.
    """
    i = F.normalize(image.float(), dim=1)
    t = F.normalize(text.float(), dim=1)
    scale = logit_scale.float().exp().clamp(max=max_logit_scale)
    logits = scale * i @ t.t()
    target = torch.arange(len(i), device=i.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def patch_nce(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """PatchNCE (CUT; Park, Efros, Zhang & Zhu, 2020, eq. 2 and 5), one layer.

    ``q`` (B, P, D): features of the *output* image at P sampled locations (after the layer's MLP);
    ``k`` (B, P, D): the *input* image's features at the same locations (no gradient reaches them, as in
    the official code). With rows L2-normalised, the positive of q_bi is k_bi (the same location) and its
    negatives are the other P - 1 locations of the same image:

        L = 1/(B P) sum_b sum_i -log( exp(q_bi . k_bi / tau) / sum_j exp(q_bi . k_bj / tau) )
    """
    q = F.normalize(q.float(), dim=-1)
    k = F.normalize(k.detach().float(), dim=-1)
    b, p, _ = q.shape
    logits = q @ k.transpose(1, 2) / temperature                # (B, P, P): row i, column j = q_bi . k_bj / tau
    target = torch.arange(p, device=q.device).repeat(b)
    return F.cross_entropy(logits.reshape(b * p, p), target)


def gan_loss(logits: torch.Tensor, real: bool, mode: str = "lsgan") -> torch.Tensor:
    """A GAN objective on a discriminator's logits (a PatchGAN map: every patch counts once), with target
    t = 1 for real, 0 for fake:

        lsgan (Mao et al., 2017):                 L = mean (D(x) - t)^2
        nonsaturating (Goodfellow et al., 2014):  L = mean softplus(-D(x)) if real else mean softplus(D(x))

    The discriminator minimises L(real, 1) and L(fake, 0); the generator minimises L(fake, 1).
    """
    x = logits.float()
    if mode == "lsgan":
        return (x - (1.0 if real else 0.0)).pow(2).mean()
    if mode == "nonsaturating":
        return F.softplus(-x if real else x).mean()
    raise ValueError(f"unknown GAN mode {mode!r}; valid: lsgan, nonsaturating")


def distillation_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The distillation term of Evolving Losses (Piergiovanni, Angelova & Ryoo, 2020, Sec. 3.2): the
    squared L2 distance between a layer of the main (RGB) network and the same layer of another
    modality's network, which is the target (no gradient reaches it):

        L_d = 1/(N D) sum_i || s_i - sg(t_i) ||^2

    over N samples of D-dimensional activations (the mean over dimensions keeps the term's scale
    independent of the layer's width; the paper's weight lambda_d absorbs any constant).
    """
    return (student.float() - teacher.detach().float()).pow(2).mean()


def curl_logits(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """CURL's bilinear similarities (Laskin, Srinivas & Abbeel, 2020, Eq. 5): logits_ij = scale * q_i^T W k_j
    between the queries q (N, D) and the keys k (N, D), no normalisation; the keys carry no gradient.
    (Each row's maximum is subtracted, as CURL's code does: the cross-entropy is unchanged by it.)"""
    logits = scale * (q.float() @ w.float() @ k.detach().float().t())
    return logits - logits.detach().max(dim=1, keepdim=True).values


def curl_loss(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """CURL's InfoNCE over the batch: query i's positive is key i (another crop of the same frames), the
    other keys are its negatives:

        L = 1/N sum_i -log( exp(s q_i^T W k_i) / sum_j exp(s q_i^T W k_j) )
    """
    logits = curl_logits(q, k, w, scale)
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))
