"""``end`` events name the last frame the track was seen in and carry no latency
(issue 19, defect 3: they said frame_index 0 and latency_ms ~0.01)."""

from tests.test_loop import FACE, HAPPY, NEUTRAL, ScriptedPerception, frame, run_script


def test_end_on_timeout_in_a_frame_names_the_last_frame_seen():
    emotions = [[NEUTRAL]] * 10 + [[HAPPY]] * 60
    boxes = [[FACE]] * 20 + [[]]
    perception = ScriptedPerception(boxes, emotions)
    loop, sink, now = run_script(perception, 20)
    for i in range(20, 70):
        now[0] = i / 30
        loop.step(frame(100 + i, now[0]))  # capture indexes need not start at 0
    (end,) = [e for e in sink.events if e.type == "end"]
    assert end.frame_index == 19
    assert end.latency_ms is None
    new = next(e for e in sink.events if e.type == "new")
    assert new.frame_index == 1 and new.latency_ms is not None


def test_end_at_idle_and_at_shutdown_name_the_last_frame_seen():
    perception = ScriptedPerception([[FACE]], [[NEUTRAL]])
    loop, sink, now = run_script(perception, 12)
    now[0] = 5.0
    loop.idle()  # no frame came for a while: the track timed out
    (end,) = [e for e in sink.events if e.type == "end"]
    assert (end.frame_index, end.latency_ms) == (11, None)

    perception = ScriptedPerception([[FACE]], [[NEUTRAL]])
    loop, sink, now = run_script(perception, 7)
    loop.finish()
    (end,) = [e for e in sink.events if e.type == "end"]
    assert (end.frame_index, end.latency_ms) == (6, None)
    # the event-latency figures count only events that a frame caused
    assert loop.metrics.event.count == len(sink.events) - 1


def test_confidence_is_rounded_like_the_scores():
    perception = ScriptedPerception([[FACE]], [[[0.123456789, 0.8, 0.076543211]]])
    _loop, sink, _now = run_script(perception, 3)
    new = next(e for e in sink.events if e.type == "new")
    assert new.confidence == round(new.confidence, 4) == new.scores[new.label]
