"""Delivery: how a report leaves the unit, and the daemon that decides when.

The modules, from the resident process down to the wire:

* ``daemon``: the resident supervisor under systemd (watchdog, timers, route and hot-plug events,
  the control socket); it never collects nor sends, it starts a cycle child for that;
  ``plan``: what it does next, pure; ``sources``: its event sources (signals, control socket,
  netlink, udev, the child); ``settings``: its view of the config; ``timetable``: the schedule
  as it keeps it (state file, memory, routes); ``service``: logging and file sharing under systemd;
* ``schedule``: when the next report is due (boot, daily with a per-unit splay, backoff), pure;
* ``cycle``: one report cycle, the child process (``python3 -m evo_agent.delivery cycle``);
* ``outbox``: the crash-safe queue of signed reports; ``translog``: what left the unit;
* ``transport``: HTTPS or the VPN, chosen per attempt (``tunnel``: is the VPN working;
  ``netlink``: routes and link events); ``signing``: the device key and report signatures;
* ``objection``: the owner's opt-out and opt-in, told to the registry;
* ``control``: the daemon's local socket (status, send now); ``notify``: sd_notify;
  ``boottimer``: a timer that counts suspended time (CLOCK_BOOTTIME).

This file imports nothing: the daemon loads only the modules it needs, to stay small at idle.
"""
