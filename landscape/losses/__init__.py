"""Loss library: the losses of the seeds behind one protocol, by name or combined spec string.

Every loss is an ``nn.Module`` called as ``loss(logits, target, features=None, weight=None)``
returning the batch mean; margin losses (``needs_features = True``) also take the
penultimate features and the classifier weight (see :mod:`landscape.objective`)::

    import landscape as ls
    ls.losses.names()                                    # canonical names
    ls.losses.get("am-softmax", m=0.35, s=30)            # one loss with parameters
    ls.losses.build("0.25*hinge + 0.65*l-softmax(m=4) + 0.34*a-softmax(m=4)")

Names are case-insensitive and have aliases (``"CE"``, ``"cross-entropy"``, ``"A2"``).
Losses that are functions of target and probabilities (:class:`ProbabilityLoss`: CE, focal,
SCE, Adma, the evolved losses) expose ``of_probabilities``, which phenotypes evaluate.

Modules: :mod:`.base` (protocol, registry, spec strings), :mod:`.classical`,
:mod:`.margin`, :mod:`.evolved`.
"""
from __future__ import annotations

from .base import (EPS, Combined, ElementwiseLoss, Loss, ProbabilityLoss, build, canonical, get, names,
                   parse_spec, register)
from .classical import SCE, Adma, CrossEntropy, Focal, Hinge
from .evolved import FORMULAS_TEXT, Evolved
from .margin import AMSoftmax, ASoftmax, LSoftmax, MAMSoftmax, SMSoftmax, mam_margin

__all__ = ["EPS", "Loss", "ProbabilityLoss", "ElementwiseLoss", "Combined", "register", "names", "canonical", "get",
           "build", "parse_spec", "CrossEntropy", "Hinge", "Focal", "SCE", "Adma", "SMSoftmax", "MAMSoftmax",
           "LSoftmax", "ASoftmax", "AMSoftmax", "Evolved", "FORMULAS_TEXT", "mam_margin"]
