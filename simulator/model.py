"""The cookie line's physics: machines, process values, cookies and their true defects.

    mixer -> depositor -> oven (3 zones) -> cooling conveyor -> detector (camera) -> packaging

The model steps in fixed simulated ticks (1 s by default). Every tick:

- the hall environment drifts (ambient temperature, humidity: Ornstein-Uhlenbeck noise around a mean);
- the mixer's speed follows its setpoint; dough torque = 48 + 0.8 (speed - 70) - 4 (water_ratio - 28) - slip;
- the depositor drops `deposit_rate` cookies a minute onto the oven belt while mixer, depositor and oven run;
- each oven zone follows its setpoint (plus any heat fault) with a first-order thermal lag (tau 90 s);
  heater power rises with the heat held in the zones;
- cookies ride the 12 m oven belt (4 minutes at 3 m/min) and accumulate the heat they see in each zone;
- on leaving the oven each cookie gets its true defects (cause and effect below) and rides the 9 m cooling
  conveyor to the detector, or is diverted to scrap when the conveyor is stopped;
- the detector counts the cookies that pass under it; packaging packs ten a pack and reports a batch every
  `batch_period_s`.

Cause and effect, each defect drawn independently (a cookie can have several; none = good):

- burnt:    bake dose = mean over the bake of (zone temperature - recipe temperature), scaled by the time in the
            oven; p = 0.4% + 95% * sigmoid((dose - 8 C) / 1.5 C). One zone 40 C over its recipe setpoint gives a
            dose of 13 C, about 93% burnt.
- deformed: p = 0.6% + 80% * sigmoid((39 Nm - dough torque) / 1.2 Nm). Under-developed dough spreads.
- bubbled:  dough moisture = water_ratio + 0.1 (humidity - 45 %RH); p = 0.6% + 75% * sigmoid((moisture - 29.5) / 0.35).
- cracked:  p = 0.4% + 80% * sigmoid((11 C - cooling air) / 1.5 C). Cooling too fast checks the crumb.

The recipe temperatures are the plant model's default setpoints: the product does not care what the
setpoint says, only what the heat is. Everything random comes from generators seeded by `seed`, so the same seed,
scenario and commands at the same simulated times give the same run.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lineguard.plant import Line, Machine, PlantModel
from simulator.clock import SimClock
from simulator.ground_truth import GroundTruthLog
from simulator.scenarios import Fault, Scenario

DEFECTS = ("cracked", "deformed", "bubbled", "burnt")
OVEN_LENGTH_M = 12.0
COOLING_LENGTH_M = 9.0
COOKIES_PER_PACK = 10
OVEN_TAU_S = 90.0
NOMINAL_BELT_SPEED = 3.0  # m/min; the recipe's bake time is OVEN_LENGTH_M / this

# Measurement noise (one standard deviation) by unit code; counts are exact.
NOISE_BY_UNIT = {"CEL": 0.3, "NU": 0.4, "RPM": 0.4, "P1": 0.3, "2X": 0.01, "C62": 0.0, "GRM": 0.0, "KWT": 0.05,
                 "AMP": 0.05}


class ControlError(Exception):
    """A control request the line refuses; `status` is the HTTP status the control API answers with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _sigmoid(x: float) -> float:
    if x < -60:
        return 0.0
    return 1.0 / (1.0 + math.exp(-x))


def defect_probabilities(bake_dose_c: float, torque_nm: float, moisture_pct: float, cooling_air_c: float
                         ) -> dict[str, float]:
    """The chance of each defect for one cookie, from the conditions it lived through."""
    return {
        "burnt": 0.004 + 0.95 * _sigmoid((bake_dose_c - 8.0) / 1.5),
        "deformed": 0.006 + 0.80 * _sigmoid((39.0 - torque_nm) / 1.2),
        "bubbled": 0.006 + 0.75 * _sigmoid((moisture_pct - 29.5) / 0.35),
        "cracked": 0.004 + 0.80 * _sigmoid((11.0 - cooling_air_c) / 1.5),
    }


@dataclass
class Cookie:
    item_id: str
    deposited_s: float
    torque_nm: float
    moisture_pct: float
    oven_pos_m: float = 0.0
    excess_integral: float = 0.0  # sum over the bake of (zone temperature - recipe temperature) * dt
    bake_s: float = 0.0
    exited_s: float | None = None
    cooling_pos_m: float = 0.0
    bake_dose_c: float = 0.0
    cooling_air_c: float = 0.0
    defects: frozenset[str] = frozenset()
    weight_g: float = 0.0


@dataclass
class Reading:
    machine: str
    attribute: str
    device: str
    metric: str
    value: float | str
    unit: str | None
    sim_s: float


@dataclass
class Alarm:
    machine: str
    device: str
    alarm: str  # e.g. "zone2_temperature_high", "conveyor_stopped"
    state: str  # raise | clear
    severity: str  # critical | warning | info
    value: float | str | None
    limit: float | None
    message: str
    sim_s: float


@dataclass
class BatchReport:
    batch_id: str
    started_s: float
    ended_s: float
    packs: int
    rejects: int
    mean_pack_weight_g: float


@dataclass
class StepEvents:
    """What happened in one tick, for the emitters."""

    exited: list[Cookie] = field(default_factory=list)
    detected: list[Cookie] = field(default_factory=list)
    batches: list[BatchReport] = field(default_factory=list)
    fault_changes: list[tuple[str, Fault]] = field(default_factory=list)


@dataclass
class MachineRuntime:
    id: str
    state: str = "running"  # running | stopped | fault
    setpoints: dict[str, float] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state == "running"


class _Drift:
    """Ornstein-Uhlenbeck drift around a mean: slow wander with a given spread."""

    def __init__(self, mean: float, spread: float, tau_s: float, rng: np.random.Generator) -> None:
        self.mean, self.spread, self.tau, self.rng = mean, spread, tau_s, rng
        self.value = mean

    def step(self, dt: float) -> float:
        theta = dt / self.tau
        self.value += (self.mean - self.value) * theta + self.spread * math.sqrt(2 * theta) * self.rng.standard_normal()
        return self.value


def _lag(current: float, target: float, dt: float, tau: float) -> float:
    return target + (current - target) * math.exp(-dt / tau)


class CookieLine:
    """One simulated line. Drive it with `step()`; control it with `set_setpoint`, `start_machine`, `stop_machine`."""

    def __init__(
        self,
        plant: PlantModel,
        line_id: str | None = None,
        seed: int = 0,
        clock: SimClock | None = None,
        scenario: Scenario | None = None,
        ground_truth: GroundTruthLog | None = None,
        batch_period_s: float = 300.0,
    ) -> None:
        self.plant = plant
        self.line: Line = plant.lines[line_id] if line_id else next(iter(plant.lines.values()))
        for needed in ("mixer", "depositor", "oven", "cooling-conveyor", "detector", "packaging", "environment"):
            if needed not in self.line.machines:
                raise ValueError(f"line {self.line.id} has no machine {needed!r}; the simulator models the cookie line")
        self.seed = seed
        self.clock = clock or SimClock()
        self.scenario = scenario
        self.faults: list[Fault] = list(scenario.faults) if scenario else []
        self.truth_log = ground_truth or GroundTruthLog(None)
        self.batch_period_s = batch_period_s

        seeds = np.random.SeedSequence(seed).spawn(5)
        self._process_rng = np.random.default_rng(seeds[0])
        self._noise_rng = np.random.default_rng(seeds[1])
        self._cookie_rng = np.random.default_rng(seeds[2])
        self.camera_rng = np.random.default_rng(seeds[3])
        # Reads through the control API draw their noise here, so polling the API never changes the run itself.
        self._view_rng = np.random.default_rng(seeds[4])

        self.machines: dict[str, MachineRuntime] = {
            m.id: MachineRuntime(m.id, setpoints={p: s.default for p, s in m.setpoints.items()})
            for m in self.line.machines.values()
        }
        self.recipe = {f"zone{i}": self.machines["oven"].setpoints[f"zone{i}_setpoint"] for i in (1, 2, 3)}
        self._ambient = _Drift(22.0, 0.6, 1800.0, self._process_rng)
        self._humidity = _Drift(45.0, 1.5, 1800.0, self._process_rng)
        self._torque_drift = _Drift(0.0, 0.6, 600.0, self._process_rng)

        mixer_sp = self.machines["mixer"].setpoints
        oven_sp = self.machines["oven"].setpoints
        self.truth: dict[tuple[str, str], float | str] = {}
        self.zone_temps = [oven_sp[f"zone{i}_setpoint"] for i in (1, 2, 3)]
        self.mixer_speed = mixer_sp["speed"]
        self.mixer_temp = 25.0
        self.belt_speed = oven_sp["belt_speed"]
        self.conveyor_speed = self.machines["cooling-conveyor"].setpoints["speed"]
        self.cooling_air = 19.0
        self.deposit_rate = self.machines["depositor"].setpoints["deposit_rate"]
        self.humidity = 45.0
        self.ambient = 22.0
        self.torque = 48.0
        self.moisture = mixer_sp["water_ratio"]
        self.heater_power = 52.0

        self._deposit_credit = 0.0
        self._next_item = 1
        self.in_oven: deque[Cookie] = deque()
        self.on_conveyor: deque[Cookie] = deque()
        self._detected_times: deque[float] = deque()
        self._pack: list[float] = []
        self._batch_packs: list[float] = []
        self._batch_started = 0.0
        self._batch_number = 1
        self.counters = {"deposited": 0, "exited": 0, "diverted": 0, "detected": 0, "uninspected": 0, "packs": 0}
        self._fault_active: dict[int, bool] = {}
        self.changes: list[dict[str, Any]] = []
        self.truth_log.write("run_started", 0.0, self.clock.iso(0.0), scenario=scenario.name if scenario else None,
                             seed=seed, line=self.line.id, start=self.clock.iso(0.0), speed=self.clock.speed,
                             faults=[f.as_dict() for f in self.faults])
        self._prefill()
        self._update_truth()

    def _prefill(self) -> None:
        """Start in steady state: the oven and the cooling conveyor already full of cookies baked on recipe, so a
        run does not begin with seven silent minutes (which would look like a fault)."""
        per_second = self.deposit_rate / 60.0
        oven_s = OVEN_LENGTH_M / (self.belt_speed / 60.0)
        cooling_s = COOLING_LENGTH_M / (self.conveyor_speed / 60.0)
        count = int((oven_s + cooling_s) * per_second)
        for k in range(count, 0, -1):
            age_s = k / per_second  # how long ago it was deposited
            cookie = Cookie(item_id=self._new_item_id(), deposited_s=-age_s, torque_nm=self.torque,
                            moisture_pct=self.moisture)
            if age_s <= oven_s:
                cookie.oven_pos_m = age_s * self.belt_speed / 60.0
                cookie.bake_s = age_s
                self.in_oven.append(cookie)
            else:
                cookie.oven_pos_m = OVEN_LENGTH_M
                cookie.bake_s = oven_s
                exited = -(age_s - oven_s)
                self._label(cookie, exited)
                cookie.cooling_pos_m = (age_s - oven_s) * self.conveyor_speed / 60.0
                self.on_conveyor.append(cookie)
                self._log_cookie(cookie, exited, "conveyed")
        self._detected_times.extend(-s for s in range(int(60 * per_second), 0, -1))

    # --- time -------------------------------------------------------------------------------------------

    @property
    def now_s(self) -> float:
        return self.clock.seconds

    def _fault_level(self, ftype: str, **match: Any) -> float:
        level = 0.0
        for fault in self.faults:
            if fault.type == ftype and all(getattr(fault, k) == v for k, v in match.items()):
                level += fault.level(self.now_s) * (fault.magnitude if ftype != "conveyor_stop" else 1.0)
        return level

    def step(self, dt: float = 1.0) -> StepEvents:
        """Advance the line by `dt` simulated seconds."""
        self.clock.advance(dt)
        t = self.now_s
        events = StepEvents()
        self._track_faults(events)
        m = self.machines

        # Environment.
        self.ambient = self._ambient.step(dt)
        self.humidity = self._humidity.step(dt) + self._fault_level("humidity_rise")

        # Mixer: the dough it makes now is the dough the depositor drops now (mixing lag is ignored).
        mixer = m["mixer"]
        self.mixer_speed = _lag(self.mixer_speed, mixer.setpoints["speed"] if mixer.running else 0.0, dt, 5.0)
        water = mixer.setpoints["water_ratio"]
        drift = self._torque_drift.step(dt)
        if self.mixer_speed > 1.0:
            self.torque = (48.0 + 0.8 * (self.mixer_speed - 70.0) - 4.0 * (water - 28.0)
                           - self._fault_level("mixer_torque_loss") + drift)
            self.torque = max(0.0, self.torque * min(1.0, self.mixer_speed / 40.0))
        else:
            self.torque = 0.0
        self.mixer_temp = _lag(self.mixer_temp, self.ambient + (2.5 + 0.01 * self.mixer_speed
                                                                if mixer.running else 0.0), dt, 300.0)
        self.moisture = water + 0.1 * (self.humidity - 45.0)

        # Oven zones and belt.
        oven = m["oven"]
        targets = []
        for i in range(3):
            zone = i + 1
            if oven.running:
                target = oven.setpoints[f"zone{zone}_setpoint"] + self._fault_level("oven_heat_offset", zone=zone)
            else:
                target = self.ambient
            targets.append(target)
            self.zone_temps[i] = _lag(self.zone_temps[i], target, dt, OVEN_TAU_S)
        self.belt_speed = _lag(self.belt_speed, oven.setpoints["belt_speed"] if oven.running else 0.0, dt, 3.0)
        if oven.running:
            held = sum(self.zone_temps[i] - self.recipe[f"zone{i + 1}"] for i in range(3))
            pulling = sum(targets[i] - self.zone_temps[i] for i in range(3))
            self.heater_power = min(100.0, max(0.0, 52.0 + 0.45 * held + 1.0 * pulling))
        else:
            self.heater_power = 0.0

        # Cooling conveyor.
        conveyor = m["cooling-conveyor"]
        self.conveyor_speed = _lag(self.conveyor_speed, conveyor.setpoints["speed"] if conveyor.running else 0.0,
                                   dt, 3.0)
        if not conveyor.running and self.conveyor_speed < 0.05:
            self.conveyor_speed = 0.0
        self.cooling_air = _lag(self.cooling_air, self.ambient - 3.0 - self._fault_level("cooling_fault"), dt, 60.0)

        # Depositor.
        depositor = m["depositor"]
        self.deposit_rate = depositor.setpoints["deposit_rate"] if depositor.running else 0.0
        if depositor.running and mixer.running and oven.running and self.torque > 0:
            self._deposit_credit += self.deposit_rate / 60.0 * dt
            while self._deposit_credit >= 1.0:
                self._deposit_credit -= 1.0
                self._deposit(t)

        self._bake(dt, t, events)
        self._convey(dt, t, events)
        self._package(t, events)
        self._update_truth()
        return events

    def run_until(self, sim_s: float, dt: float = 1.0) -> list[StepEvents]:
        out = []
        while self.now_s + 1e-9 < sim_s:
            out.append(self.step(dt))
        return out

    # --- cookies ----------------------------------------------------------------------------------------

    def _new_item_id(self) -> str:
        item_id = f"{self.line.id}-{self.seed}-{self._next_item:07d}"
        self._next_item += 1
        return item_id

    def _deposit(self, t: float) -> None:
        self.in_oven.append(Cookie(item_id=self._new_item_id(), deposited_s=t, torque_nm=self.torque, moisture_pct=self.moisture))
        self.counters["deposited"] += 1

    def _bake(self, dt: float, t: float, events: StepEvents) -> None:
        advance = self.belt_speed / 60.0 * dt
        excess = [self.zone_temps[i] - self.recipe[f"zone{i + 1}"] for i in range(3)]
        third = OVEN_LENGTH_M / 3.0
        for cookie in self.in_oven:
            cookie.oven_pos_m += advance
            zone = min(2, int(min(cookie.oven_pos_m, OVEN_LENGTH_M - 1e-6) / third))
            cookie.excess_integral += excess[zone] * dt
            cookie.bake_s += dt
        conveyor_running = self.machines["cooling-conveyor"].running
        while self.in_oven and self.in_oven[0].oven_pos_m >= OVEN_LENGTH_M:
            cookie = self.in_oven.popleft()
            self._label(cookie, t)
            self.counters["exited"] += 1
            fate = "conveyed" if conveyor_running else "diverted"
            if conveyor_running:
                self.on_conveyor.append(cookie)
            else:
                self.counters["diverted"] += 1
            events.exited.append(cookie)
            self._log_cookie(cookie, t, fate)

    def _log_cookie(self, cookie: Cookie, t: float, fate: str) -> None:
        self.truth_log.write(
            "cookie", t, self.clock.iso(t), item_id=cookie.item_id, deposited_s=round(cookie.deposited_s, 3),
            exited_oven_s=round(t, 3), defects=sorted(cookie.defects), fate=fate,
            bake_dose_c=round(cookie.bake_dose_c, 2), dough_torque_nm=round(cookie.torque_nm, 2),
            dough_moisture_pct=round(cookie.moisture_pct, 2), cooling_air_c=round(cookie.cooling_air_c, 2),
            weight_g=round(cookie.weight_g, 2))

    def _label(self, cookie: Cookie, t: float) -> None:
        """Cause and effect: the cookie's true defects from what it lived through."""
        nominal_bake = OVEN_LENGTH_M / NOMINAL_BELT_SPEED * 60.0
        dwell_ratio = cookie.bake_s / nominal_bake
        mean_excess = cookie.excess_integral / cookie.bake_s if cookie.bake_s else 0.0
        cookie.bake_dose_c = mean_excess * dwell_ratio + 30.0 * (dwell_ratio - 1.0)
        cookie.cooling_air_c = self.cooling_air
        cookie.exited_s = t
        chances = defect_probabilities(cookie.bake_dose_c, cookie.torque_nm, cookie.moisture_pct, self.cooling_air)
        draws = self._cookie_rng.random(len(DEFECTS))
        cookie.defects = frozenset(d for d, u in zip(DEFECTS, draws, strict=True) if u < chances[d])
        weight = 25.2 + 0.35 * self._cookie_rng.standard_normal()
        if "burnt" in cookie.defects:
            weight -= 1.2
        if "cracked" in cookie.defects:
            weight -= 0.6
        if "bubbled" in cookie.defects:
            weight -= 0.3
        if "deformed" in cookie.defects:
            weight += 1.2 * self._cookie_rng.standard_normal()
        cookie.weight_g = weight

    def _convey(self, dt: float, t: float, events: StepEvents) -> None:
        advance = self.conveyor_speed / 60.0 * dt
        if advance <= 0:
            return
        for cookie in self.on_conveyor:
            cookie.cooling_pos_m += advance
        detector_running = self.machines["detector"].running
        while self.on_conveyor and self.on_conveyor[0].cooling_pos_m >= COOLING_LENGTH_M:
            cookie = self.on_conveyor.popleft()
            if detector_running:
                self.counters["detected"] += 1
                self._detected_times.append(t)
                events.detected.append(cookie)
                self.truth_log.write("cookie_detected", t, self.clock.iso(t), item_id=cookie.item_id)
            else:
                self.counters["uninspected"] += 1
            if self.machines["packaging"].running:
                self._pack.append(cookie.weight_g)
                if len(self._pack) >= COOKIES_PER_PACK:
                    self._batch_packs.append(sum(self._pack))
                    self._pack.clear()
                    self.counters["packs"] += 1

    def _package(self, t: float, events: StepEvents) -> None:
        if t - self._batch_started + 1e-9 < self.batch_period_s:
            return
        packs = self._batch_packs
        rejects = sum(1 for w in packs if not 245.0 <= w <= 260.0)
        report = BatchReport(
            batch_id=f"{self.line.id}-B{self._batch_number:05d}",
            started_s=self._batch_started,
            ended_s=t,
            packs=len(packs),
            rejects=rejects,
            mean_pack_weight_g=round(sum(packs) / len(packs), 2) if packs else 0.0,
        )
        events.batches.append(report)
        self.truth_log.write("batch_report", t, self.clock.iso(t), batch_id=report.batch_id, packs=report.packs,
                             rejects=report.rejects, mean_pack_weight_g=report.mean_pack_weight_g)
        self._batch_number += 1
        self._batch_started = t
        self._batch_packs = []

    # --- faults -----------------------------------------------------------------------------------------

    def _track_faults(self, events: StepEvents) -> None:
        t = self.now_s
        for index, fault in enumerate(self.faults):
            active = fault.active(t)
            if active == self._fault_active.get(index, False):
                continue
            self._fault_active[index] = active
            kind = "fault_started" if active else "fault_ended"
            events.fault_changes.append((kind, fault))
            self.truth_log.write(kind, t, self.clock.iso(t), fault=fault.as_dict())
            if fault.type == "conveyor_stop":
                machine = self.machines[fault.machine]
                if active and machine.state == "running":
                    self._set_state(fault.machine, "fault", "trip", "scenario", f"fault {fault.type}")
                elif not active and machine.state == "fault":
                    self._set_state(fault.machine, "running", "start", "scenario", "fault cleared")

    # --- control ----------------------------------------------------------------------------------------

    def machine_model(self, machine_id: str) -> Machine:
        machine = self.line.machines.get(machine_id)
        if machine is None:
            raise ControlError(404, f"no machine {machine_id!r} on line {self.line.id}; "
                                    f"known: {', '.join(self.line.machines)}")
        return machine

    def set_setpoint(self, machine_id: str, parameter: str, value: Any, source: str = "api",
                     reason: str | None = None) -> dict[str, Any]:
        """Change a setpoint within the plant model's limits; returns the change with the previous value."""
        machine = self.machine_model(machine_id)
        setpoint = machine.setpoints.get(parameter)
        if setpoint is None:
            known = ", ".join(machine.setpoints) or "none"
            raise ControlError(404, f"machine {machine_id!r} has no setpoint {parameter!r}; known: {known}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ControlError(400, f"value must be a finite number, got {value!r}")
        why = setpoint.check(float(value))
        if why:
            raise ControlError(422, why)
        runtime = self.machines[machine_id]
        previous = runtime.setpoints[parameter]
        runtime.setpoints[parameter] = float(value)
        change = {"kind": "setpoint", "machine": machine_id, "parameter": parameter, "previous": previous,
                  "value": float(value), "unit": setpoint.unit, "source": source, "reason": reason,
                  "sim_s": round(self.now_s, 3), "at": self.clock.iso()}
        self.changes.append(change)
        self.truth_log.write("setpoint_changed", self.now_s, self.clock.iso(), machine=machine_id,
                             parameter=parameter, previous=previous, value=float(value), unit=setpoint.unit,
                             source=source, reason=reason)
        self._update_truth()
        return change

    def start_machine(self, machine_id: str, source: str = "api", reason: str | None = None) -> dict[str, Any]:
        self.machine_model(machine_id)
        return self._set_state(machine_id, "running", "start", source, reason)

    def stop_machine(self, machine_id: str, source: str = "api", reason: str | None = None) -> dict[str, Any]:
        self.machine_model(machine_id)
        return self._set_state(machine_id, "stopped", "stop", source, reason)

    def _set_state(self, machine_id: str, state: str, action: str, source: str, reason: str | None) -> dict[str, Any]:
        runtime = self.machines[machine_id]
        previous = runtime.state
        runtime.state = state
        change = {"kind": "command", "machine": machine_id, "action": action, "previous_state": previous,
                  "state": state, "source": source, "reason": reason, "sim_s": round(self.now_s, 3),
                  "at": self.clock.iso()}
        self.changes.append(change)
        self.truth_log.write("machine_command", self.now_s, self.clock.iso(), machine=machine_id, action=action,
                             previous_state=previous, state=state, source=source, reason=reason)
        self._update_truth()
        return change

    # --- what the sensors see ---------------------------------------------------------------------------

    def _update_truth(self) -> None:
        m = self.machines
        items = sum(1 for s in self._detected_times if s > self.now_s - 60.0)
        while self._detected_times and self._detected_times[0] <= self.now_s - 60.0:
            self._detected_times.popleft()
        self.truth.update({
            ("mixer", "temperature"): self.mixer_temp,
            ("mixer", "torque"): self.torque,
            # the drive motor's current follows the work on the dough: a real torque loss shows in both
            ("mixer", "motor_current"): 2.0 + 0.2 * self.torque if self.mixer_speed > 1.0 else 0.0,
            ("mixer", "speed"): self.mixer_speed,
            ("depositor", "deposit_rate"): self.deposit_rate,
            ("oven", "zone1_temperature"): self.zone_temps[0],
            ("oven", "zone2_temperature"): self.zone_temps[1],
            ("oven", "zone3_temperature"): self.zone_temps[2],
            ("oven", "heater_power"): self.heater_power,
            ("oven", "belt_speed"): self.belt_speed,
            ("cooling-conveyor", "speed"): self.conveyor_speed,
            ("cooling-conveyor", "state"): m["cooling-conveyor"].state,
            ("cooling-conveyor", "air_temperature"): self.cooling_air,
            ("detector", "items_per_minute"): float(items) if m["detector"].running else 0.0,
            ("environment", "humidity"): self.humidity,
            ("environment", "ambient_temperature"): self.ambient,
        })

    def readings(self, machines: Iterable[str] | None = None, rng: np.random.Generator | None = None
                 ) -> list[Reading]:
        """What the sensors report now: the truth plus noise plus any sensor faults, rounded as a device would."""
        rng = rng or self._noise_rng
        wanted = set(machines) if machines is not None else None
        out = []
        for machine in self.line.machines.values():
            if wanted is not None and machine.id not in wanted:
                continue
            for sensor in machine.sensors:
                true_value = self.truth.get((machine.id, sensor.attribute))
                if true_value is None:
                    continue
                value: float | str
                if isinstance(true_value, str):
                    value = true_value
                else:
                    sigma = NOISE_BY_UNIT.get(sensor.unit or "", 0.1)
                    noisy = true_value + (sigma * rng.standard_normal() if sigma else 0.0)
                    noisy += self._fault_level("sensor_bias", machine=machine.id, attribute=sensor.attribute)
                    value = round(noisy, 3 if sensor.unit == "2X" else 2)
                out.append(Reading(machine.id, sensor.attribute, sensor.device, sensor.metric, value, sensor.unit,
                                   self.now_s))
        return out

    def state(self) -> dict[str, Any]:
        """The line as the control API shows it: machines, states, setpoints and their limits, last readings."""
        readings: dict[str, dict[str, Any]] = {}
        for reading in self.readings(rng=self._view_rng):
            readings.setdefault(reading.machine, {})[reading.attribute] = reading.value
        return {
            "line": self.line.id,
            "name": self.line.name,
            "sim_time": self.clock.iso(),
            "sim_seconds": round(self.now_s, 3),
            "speed": self.clock.speed,
            "machines": {mid: self.machine_state(mid, readings.get(mid, {})) for mid in self.line.machines},
            "counters": dict(self.counters),
        }

    def machine_state(self, machine_id: str, readings: dict[str, Any] | None = None) -> dict[str, Any]:
        machine = self.machine_model(machine_id)
        runtime = self.machines[machine_id]
        if readings is None:
            readings = {r.attribute: r.value for r in self.readings([machine_id], rng=self._view_rng)}
        return {
            "id": machine.id,
            "type": machine.type,
            "name": machine.name,
            "state": runtime.state,
            "setpoints": {
                p: {"value": runtime.setpoints[p], "unit": s.unit, "min": s.min, "max": s.max,
                    "max_step": s.max_step, "default": s.default}
                for p, s in machine.setpoints.items()
            },
            "readings": readings,
        }


class AlarmTracker:
    """Raises an alarm when a reading leaves its normal range and clears it when the reading is back inside by a
    hysteresis margin (2% of the range), so noise at the limit does not flap. A conveyor that stops on a fault
    raises a critical `stopped` alarm."""

    def __init__(self, line: Line, hysteresis: float = 0.02) -> None:
        self.line = line
        self.hysteresis = hysteresis
        self.active: dict[tuple[str, str], Alarm] = {}

    def update(self, readings: Iterable[Reading]) -> list[Alarm]:
        changes: list[Alarm] = []
        for reading in readings:
            sensor = self.line.machines[reading.machine].sensor(reading.attribute)
            if sensor is None:
                continue
            if isinstance(reading.value, str):
                self._state_alarm(reading, changes)
                continue
            if sensor.normal is None:
                continue
            low, high = sensor.normal.min, sensor.normal.max
            margin = (high - low) * self.hysteresis
            for side, outside, back_inside, limit in (
                ("high", reading.value > high, reading.value <= high - margin, high),
                ("low", reading.value < low, reading.value >= low + margin, low),
            ):
                key = (reading.machine, f"{reading.attribute}_{side}")
                if outside and key not in self.active:
                    beyond = abs(reading.value - limit) / max(high - low, 1e-9)
                    alarm = Alarm(reading.machine, reading.device, key[1], "raise",
                                  "critical" if beyond > 0.5 else "warning", reading.value, limit,
                                  f"{reading.attribute} {reading.value:g} {sensor.unit or ''} is {side}er than "
                                  f"the normal {'maximum' if side == 'high' else 'minimum'} {limit:g}",
                                  reading.sim_s)
                    self.active[key] = alarm
                    changes.append(alarm)
                elif back_inside and key in self.active:
                    raised = self.active.pop(key)
                    changes.append(Alarm(reading.machine, reading.device, key[1], "clear", raised.severity,
                                         reading.value, limit, f"{reading.attribute} is back in its normal range",
                                         reading.sim_s))
        return changes

    def _state_alarm(self, reading: Reading, changes: list[Alarm]) -> None:
        key = (reading.machine, "stopped")
        if reading.value == "fault" and key not in self.active:
            alarm = Alarm(reading.machine, reading.device, "stopped", "raise", "critical", reading.value, None,
                          f"{reading.machine} stopped on a fault", reading.sim_s)
            self.active[key] = alarm
            changes.append(alarm)
        elif reading.value != "fault" and key in self.active:
            self.active.pop(key)
            changes.append(Alarm(reading.machine, reading.device, "stopped", "clear", "critical", reading.value,
                                 None, f"{reading.machine} is {reading.value}", reading.sim_s))
