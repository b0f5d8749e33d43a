"""A visitor's runs survive a reload: the store behind the browser's token (demo.app.visitors)."""

from __future__ import annotations

import time

from demo.app.visitors import PageHandlers, Visitors


def store(**kwargs) -> tuple[Visitors, list]:
    dropped: list = []
    return Visitors(ttl=kwargs.get("ttl", 60.0), capacity=kwargs.get("capacity", 10), on_drop=dropped.append), dropped


def test_a_returning_token_brings_back_the_session_and_the_controls():
    visitors, _ = store()
    token, session, controls = visitors.restore(None)  # a first visit: a new token, nothing kept
    assert session is None and controls == {} and len(token) >= 40
    kept = {"runs": [{"id": 1}], "next_id": 2, "folder": ""}
    visitors.save_session({"visitor": token}, kept)
    visitors.save_controls({"visitor": token}, {"steps": 300, "dataset": "moons"})
    again, session, controls = visitors.restore({"visitor": token})
    assert again == token and session is kept and controls == {"steps": 300, "dataset": "moons"}


def test_a_token_the_store_did_not_hand_out_reads_and_writes_nothing():
    visitors, _ = store()
    owner, _, _ = visitors.restore(None)
    visitors.save_session({"visitor": owner}, {"runs": [{"id": 1}]})
    for forged in ({"visitor": "guess"}, {"visitor": owner[:-1]}, {"visitor": 5}, "x" * 10, None, {}):
        visitors.save_session(forged, {"runs": ["planted"]})
        token, session, _ = visitors.restore(forged)
        assert token != owner and session is None  # a stranger gets a fresh, empty visit
    assert visitors.restore({"visitor": owner})[1] == {"runs": [{"id": 1}]}


def test_entries_expire_after_their_time_to_live_and_beyond_capacity_oldest_first():
    visitors, dropped = store(ttl=0.05)
    token, _, _ = visitors.restore(None)
    visitors.save_session({"visitor": token}, {"runs": [], "folder": "a"})
    time.sleep(0.1)
    assert visitors.restore({"visitor": token})[0] != token  # expired: a new token
    assert {"runs": [], "folder": "a"} in dropped  # its download folder goes with it

    visitors, dropped = store(capacity=2)
    tokens = [visitors.restore(None)[0] for _ in range(3)]
    assert len(visitors) == 2 and visitors.restore({"visitor": tokens[0]})[0] != tokens[0]
    assert visitors.restore({"visitor": tokens[2]})[0] == tokens[2]


def test_a_flood_of_new_visitors_never_pushes_out_one_who_holds_runs():
    visitors, dropped = store(capacity=3)
    victim = visitors.restore(None)[0]
    visitors.save_session({"visitor": victim}, {"runs": [{"id": 1}], "folder": "v"})
    flood = [visitors.restore(None)[0] for _ in range(50)]  # each a page load with no token
    assert visitors.restore({"visitor": victim})[0] == victim  # still known, runs and all
    assert len(visitors) == 3 and flood[-1] in visitors._known
    assert {"runs": [{"id": 1}], "folder": "v"} not in dropped
    # When every visitor holds runs, the least recently saved one goes, with its folder.
    for token in list(visitors._known):
        if token != victim:
            visitors.save_session({"visitor": token}, {"runs": [{"id": 2}], "folder": token})
    visitors.restore(None)
    assert {"runs": [{"id": 1}], "folder": "v"} in dropped


def test_the_client_address_is_the_peer_unless_trusted_proxies_name_it():
    from demo.app.server import client_address

    scope = {"client": ("10.0.0.5", 4000), "headers": [(b"x-forwarded-for", b"6.6.6.6, 1.2.3.4")]}
    assert client_address(scope) == "10.0.0.5"  # no proxy: what the client wrote is ignored
    assert client_address(scope, proxy_hops=1) == "1.2.3.4"  # the hop our proxy added, not the forged one
    assert client_address({"client": ("10.0.0.5", 4000), "headers": []}, proxy_hops=1) == "10.0.0.5"
    from demo.app.limits import Limits

    assert Limits.from_env({"SPACE_ID": "someone/space"}).proxy_hops == 1
    assert Limits.from_env({}).proxy_hops == 0
    assert Limits.from_env({"SPACE_ID": "someone/space", "JP_PROXY_HOPS": "0"}).proxy_hops == 0


def test_the_page_load_restores_the_controls_as_they_were_and_a_new_visit_reads_the_link():
    visitors, _ = store()
    link_values = ["from-link"] * 2
    page = PageHandlers(visitors, ("dataset", "steps"), lambda request: link_values)
    browser, session, *controls, note = page.load(None, None)
    assert session != {"runs": []} and controls == link_values and note == ""  # new: the link's settings
    page.save_controls(browser, "moons", 300)
    page.save_session(browser, {"runs": [{"id": 1}, {"id": 2}]})
    again, session, *controls, note = page.load(browser, None)
    assert again == browser and session == {"runs": [{"id": 1}, {"id": 2}]}
    assert controls == ["moons", 300] and "2 run(s)" in note  # what was on screen, not the old link


class Request:
    def __init__(self, **query):
        self.query_params = query


def test_a_shared_link_sets_the_controls_but_the_visitors_own_stale_link_does_not():
    visitors, _ = store()
    page = PageHandlers(visitors, ("dataset", "seed"), lambda request: ["link"] * 2)
    browser, *_ = page.load(None, None, Request())
    page.save_link(browser, "http://127.0.0.1:7860/?dataset=moons&seed=8")
    page.save_controls(browser, "digits", 9)  # changed on screen after copying
    # The address bar still holds the visitor's own copy: what was on screen comes back.
    _, _, *controls, _ = page.load(browser, None, Request(dataset="moons", seed="8"))
    assert controls == ["digits", 9]
    # Someone else's link: its settings.
    _, _, *controls, _ = page.load(browser, None, Request(dataset="spirals", seed="1"))
    assert controls == ["link", "link"]
    # No link at all: the screen as it was.
    _, _, *controls, _ = page.load(browser, None, Request())
    assert controls == ["digits", 9]


def test_copy_link_saves_what_was_on_screen_even_before_the_change_itself_arrives():
    from demo.app.sharing import settings_of

    visitors, _ = store()
    page = PageHandlers(visitors, ("dataset", "seed"), lambda request: ["link"] * 2, settings_of)
    browser, *_ = page.load(None, None, Request(dataset="moons", seed="7"))
    page.save_controls(browser, "moons", 7)
    # Seed changed to 8 on screen and copied at once: the change's own save is still on its way
    # (a reload or navigation can abort it), but the copied link carries the screen's values.
    page.save_link(browser, "http://127.0.0.1:7860/?dataset=moons&seed=8")
    _, _, *controls, _ = page.load(browser, None, Request(dataset="moons", seed="8"))
    assert controls == ["moons", 8]


def test_live_sessions_merge_what_two_events_of_one_session_add():
    from demo.app.session import LiveSessions, new_session
    from demo.engine.config import RunConfig
    from demo.engine.record import new_record

    live = LiveSessions(ttl=60.0, max_runs=20)
    state = new_session()  # both events start from the same copy of the session's state
    first, one = live.reserve("tab", state)
    second, two = live.reserve("tab", state)
    assert (one, two) == (1, 2)
    a = live.with_run("tab", first, {"id": one, "record": new_record(RunConfig(seed=1)), "weights": {}})
    b = live.with_run("tab", second, {"id": two, "record": new_record(RunConfig(seed=2)), "weights": {}})
    assert [r["id"] for r in a["runs"]] == [1] and [r["id"] for r in b["runs"]] == [1, 2]
    assert [r["record"]["config"]["seed"] for r in b["runs"]] == [1, 2]
    other, three = live.reserve("another tab", state)  # another browser session starts afresh
    assert three == 1 and other["runs"] == []


def test_each_finished_run_is_kept_for_a_reload_at_once_not_when_the_event_ends():
    """A reload in the middle of a sweep: the runs it finished are already in the visitor's store."""
    from demo.app.session import LiveSessions, new_session
    from demo.engine.config import RunConfig
    from demo.engine.record import new_record

    visitors, _ = store()
    page = PageHandlers(visitors, ("dataset", "seed"), lambda request: ["link"] * 2)

    class Page(Request):
        session_hash = "page-1"

    browser, *_ = page.load(None, None, Page())
    live = LiveSessions(ttl=60.0, max_runs=20, on_update=visitors.save_page_session)
    state, run_id = live.reserve("page-1", new_session())
    live.with_run("page-1", state, {"id": run_id, "record": new_record(RunConfig()), "weights": {}})
    _, kept, _ = visitors.restore(browser)
    assert [r["id"] for r in kept["runs"]] == [run_id]  # before any .then() saved the session
    live.with_run("stranger", state, {"id": 9, "record": new_record(RunConfig()), "weights": {}})
    assert [r["id"] for r in visitors.restore(browser)[1]["runs"]] == [run_id]  # another page's run is not theirs
