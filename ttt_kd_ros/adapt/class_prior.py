"""Label-shift adaptation of a scan's output: class probabilities re-weighted by the scan's own class mix.

Why: a scan holds a handful of the label set's classes, in proportions unlike the source data's (a corridor is
floor and wall, an office is furniture). A classifier's posteriors carry the source proportions as a prior, so
on a scan without, say, any table, the uncertain points still go to "table", and every class the scan lacks
collects false positives, which cost mIoU on every shift and in distribution alike. The classic correction
(Saerens et al., Neural Computation 2002) divides the source prior out and multiplies the scan's in: p(c|x) x
pi_scan(c) / pi_source(c), with pi_scan estimated from the scan's own predictions. Nothing here reads a label,
the teacher or its classes: only the output probabilities and the model's source prior (``NetConfig.class_prior``,
the unadapted model's mean class probabilities on its in-distribution validation scans, scripts/validation_shifts.py).

Two choices were measured on the RGB-D validation suite (docs/EVALUATION.md, "Session 11"):
- the scan's prior is the share of points *labelled* each class (hard counts), not the mean probability
  (Saerens et al.'s EM): the mean of flat posteriors stays near the source prior, and at its best the soft
  estimate gained +1.6 OOD against +3.2;
- the correction is tempered, (pi_scan / pi_source) ** strength with strength < 1, over a few fixed-point
  iterations: the full correction (strength 1, 10 iterations) removed classes a scan does hold and lost up to
  15 points on a blurred-image shift; strength 0.5 already lost 1.4 there.
A class no point is labelled keeps ``RATIO_FLOOR`` of its source share, so a confident prediction of a class
the rest of the scan lacks (one small object) survives: a point at 0.9 against 0.1 spread over the others stays.
"""

from __future__ import annotations

import torch

RATIO_FLOOR = 0.01
"""The smallest scan-to-source share ratio a class is given: the strongest correction is RATIO_FLOOR ** strength
(0.16 at strength 0.4), never a veto."""

SOURCE_SHARE_FLOOR = 1e-4
"""The smallest share a source prior gives a class, so a class the source scans lack is not ruled out (its
ratio would divide by zero)."""


def source_prior(mean_probs: torch.Tensor) -> tuple[float, ...]:
    """(K,) mean class probabilities of a model's unadapted output on its in-distribution scans -> the source prior
    it stores (``NetConfig.class_prior``): floored at SOURCE_SHARE_FLOOR and renormalised."""
    prior = mean_probs.double().clamp_min(SOURCE_SHARE_FLOOR)
    return tuple(float(v) for v in prior / prior.sum())


def scan_class_weights(probs: torch.Tensor, source_prior: torch.Tensor, strength: float, iterations: int
                       ) -> torch.Tensor:
    """(N, K) probabilities of one scan -> (K,) float32 weights max(pi_scan / pi_source, RATIO_FLOOR) ** strength,
    with pi_scan the share of the scan's points labelled each class under the previous iteration's weights (the
    first iteration: unweighted). ``source_prior``: (K,) shares above 0. Each round is one (N, K) product and an
    argmax in the probabilities' own precision (a 120k-point scan: a few ms a round)."""
    k = probs.shape[1]
    weights = torch.ones(k, dtype=probs.dtype, device=probs.device)
    if probs.shape[0] == 0 or strength == 0.0:
        return weights
    prior = source_prior.to(device=probs.device, dtype=torch.float64)
    for _ in range(iterations):
        labels = (probs * weights).argmax(dim=1)
        share = torch.bincount(labels, minlength=k).double() / probs.shape[0]
        weights = ((share / prior).clamp_min(RATIO_FLOOR) ** strength).to(probs.dtype)
    return weights


def correct(probs: torch.Tensor, source_prior: tuple[float, ...], strength: float, iterations: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One scan's (N, K) probabilities -> (corrected (N, K) probabilities, (K,) class weights): what the Segmenter
    publishes and what scripts/choose_output_rule.py scores."""
    weights = scan_class_weights(probs, torch.tensor(source_prior, dtype=torch.float64), strength, iterations)
    return reweight(probs, weights), weights


def reweight(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, K) probabilities times (K,) class weights, renormalised per point."""
    out = probs * weights.to(device=probs.device, dtype=probs.dtype)
    return out / out.sum(dim=1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)
