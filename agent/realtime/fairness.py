"""Which cameras' frames the next batch takes when more are ready than it holds.

Stride scheduling (Waldspurger and Weihl, 1995): each camera has a *pass*; a batch
takes the ready cameras with the lowest pass (ties in configuration order), and each
camera taken advances its pass by ``1 / weight``. Over any stretch where cameras keep
having frames ready, each gets frames in proportion to its weight (equal weights:
round-robin), within one frame. A camera that had nothing ready does not bank credit
while away: when it is ready again its pass is brought up to the scheduler's virtual
time (the lowest pass taken last), so it cannot then take a run of batches from the
others. Deterministic, no clock: tests count the shares.
"""

from typing import Dict, List, Sequence


class FairShare:
    def __init__(self, weights: Dict[str, float]) -> None:
        if not weights:
            raise ValueError("FairShare needs at least one camera")
        for name, weight in weights.items():
            if not weight > 0:
                raise ValueError(f"camera {name!r}: weight must be > 0, got {weight}")
        self._weights = dict(weights)
        self._order = {name: k for k, name in enumerate(weights)}
        self._pass = {name: 0.0 for name in weights}
        self._virtual = 0.0
        self.served = {name: 0 for name in weights}  # times each camera was taken

    def choose(self, ready: Sequence[str], capacity: int) -> List[str]:
        """Up to ``capacity`` of the ``ready`` cameras, in configuration order."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        for name in ready:  # no credit banked while a camera had nothing ready
            if self._pass[name] < self._virtual:
                self._pass[name] = self._virtual
        if len(ready) <= capacity:
            chosen = list(ready)
        else:
            chosen = sorted(ready, key=lambda n: (self._pass[n], self._order[n]))[:capacity]
        if chosen:
            self._virtual = min(self._pass[n] for n in chosen)
        for name in chosen:
            self._pass[name] += 1.0 / self._weights[name]
            self.served[name] += 1
        return sorted(chosen, key=self._order.__getitem__)
