// The MMO in the browser: the lobby's rooms, quick play and join by code, then the map
// with the terminal client's glyphs and colours, the players with level and HP, the
// event log and chat. Arrows or WASD move (and fight: step into an NPC or, on the arena
// floor, a player); portals (O) lead to the other zone. Recorded matches play back on
// the same map (Watch in the lobby's list), at 1× to 16×, with a time bar.

import { Lobby, LobbyError, newPlayerKey, RoomConnection, timelineOf, type Status, type Timeline } from "./client";
import type { Envelope } from "./bindings/Envelope";
import type { In } from "./bindings/In";
import type { Npc } from "./bindings/Npc";
import type { Out } from "./bindings/Out";
import type { Player } from "./bindings/Player";
import type { FloorItem } from "./bindings/FloorItem";
import type { Fighter } from "./bindings/Fighter";
import type { Ticket } from "./bindings/Ticket";

const NPC_HP = 6;
const lobby = new Lobby();
const $ = (id: string) => document.getElementById(id)!;

/** The world as this player knows it. */
const world = {
  zone: "",
  map: [] as string[],
  players: new Map<string, Player>(),
  npcs: [] as Npc[],
  items: [] as FloorItem[],
};
let me = localStorage.getItem("gsl-name") ?? "";
let room: RoomConnection<In, Out> | null = null;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...children: (Node | string)[]) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function log(text: string, cls = "") {
  const box = $("log");
  box.append(el("div", cls ? { class: cls } : {}, text));
  while (box.childNodes.length > 200) box.firstChild!.remove();
  box.scrollTop = box.scrollHeight;
}

function fail(e: unknown) {
  $("error").textContent = e instanceof LobbyError || e instanceof Error ? e.message : String(e);
}

// ---- the lobby ----

async function showLobby() {
  stopReplay();
  $("lobby").hidden = false;
  $("game").hidden = true;
  ($("name") as HTMLInputElement).value = me;
  void showMatches();
  try {
    const rooms = await lobby.rooms();
    $("rooms").replaceChildren(
      ...rooms.map((r) => {
        const join = el("button", { "data-room": r.id }, "Join");
        join.addEventListener("click", () => play(() => lobby.join(r.id, name(), key())));
        return el("tr", {}, el("td", {}, r.name), el("td", {}, r.id), el("td", {}, `${r.players_online} / ${r.max_players}`), el("td", {}, join));
      }),
    );
  } catch (e) {
    fail(e);
  }
}

/** The recorded matches, each with a Watch button (private ones only to their players). */
async function showMatches() {
  try {
    let mine = me ? localStorage.getItem(`gsl-key:${me}`) ?? undefined : undefined;
    // A key made for a name that never joined proves nothing yet: then the public ones.
    const matches = await lobby.matches(20, mine).catch((e) => {
      if (!(e instanceof LobbyError && e.status === 401)) throw e;
      mine = undefined;
      return lobby.matches(20);
    });
    $("matches").replaceChildren(
      ...matches.map((m) => {
        const watch = el("button", { "data-match": m.id }, "Watch");
        watch.addEventListener("click", () => void watchMatch(m.id, mine));
        const when = new Date(m.first_at).toLocaleString();
        const length = clock(m.last_at - m.first_at);
        const state = m.ended_at ? `ended (${m.end_reason ?? ""})` : "on";
        return el("tr", {}, el("td", {}, m.name), el("td", {}, m.players.join(", ")), el("td", { class: "dim" }, `${when} · ${length} · ${state}`), el("td", {}, watch));
      }),
    );
  } catch (e) {
    fail(e);
  }
}

function name(): string {
  me = ($("name") as HTMLInputElement).value.trim();
  localStorage.setItem("gsl-name", me);
  return me;
}

/** The name's key: kept from its first join, made (and kept) before it. */
function key(): string {
  let key = localStorage.getItem(`gsl-key:${me}`);
  if (!key) {
    key = newPlayerKey(me);
    localStorage.setItem(`gsl-key:${me}`, key);
  }
  return key;
}

async function play(ticketOf: () => Promise<Ticket>) {
  $("error").textContent = "";
  let ticket: Ticket;
  try {
    ticket = await ticketOf();
  } catch (e) {
    return fail(e);
  }
  if (ticket.player_key) localStorage.setItem(`gsl-key:${me}`, ticket.player_key);
  sessionStorage.setItem("gsl-ticket", JSON.stringify(ticket));
  enter(ticket);
}

// ---- the game ----

function enter(ticket: Ticket) {
  stopReplay();
  me = ticket.player;
  $("lobby").hidden = true;
  $("game").hidden = false;
  room?.close();
  room = new RoomConnection<In, Out>(ticket, { onMessage, onStatus });
  room.send({ type: "look" });
  draw();
}

function onStatus(status: Status, detail?: string) {
  $("status").textContent = status + (detail ? `: ${detail}` : "");
  $("status").className = status;
  // After a reconnect the world is asked for again: what happened meanwhile is in it.
  if (status === "connected" && world.map.length > 0) room?.send({ type: "look" });
  // The ticket is refused (a kick, say): back to the lobby, saying why, as the TUI does.
  if (status === "closed" && detail) {
    room = null;
    sessionStorage.removeItem("gsl-ticket");
    void showLobby();
    $("error").textContent = detail;
  }
}

const fighter = (f: Fighter) => (f.kind === "player" ? f.name : `NPC ${f.id}`);

function onMessage(m: Envelope<Out>) {
  switch (m.type) {
    case "welcome":
      if (m.zone !== world.zone) log(`you are in the ${m.zone}`, "dim");
      world.zone = m.zone;
      world.map = m.map;
      world.players = new Map(Object.entries(m.players) as [string, Player][]);
      world.npcs = m.npcs;
      world.items = m.items;
      break;
    case "joined":
    case "respawned":
    case "level_up":
      world.players.set(m.player, { x: m.x, y: m.y, hp: m.hp, level: m.level, away: m.away });
      if (m.type === "joined") log(`${m.player} joined`, "dim");
      if (m.type === "level_up") log(`${m.player} reached level ${m.level}`, "good");
      if (m.type === "respawned") log(`${m.player} is back on their feet`, "dim");
      break;
    case "left":
      world.players.delete(m.player);
      log(`${m.player} left`, "dim");
      break;
    case "dropped":
    case "back": {
      const p = world.players.get(m.player);
      if (p) p.away = m.type === "dropped";
      break;
    }
    case "moved": {
      const p = world.players.get(m.player);
      if (p) Object.assign(p, { x: m.x, y: m.y });
      break;
    }
    case "picked":
      world.items = world.items.filter((i) => i.id !== m.id);
      log(`${m.player} picked up a ${m.item}`);
      break;
    case "item":
      world.items.push(m.item);
      break;
    case "npcs":
      world.npcs = m.npcs;
      break;
    case "hit":
      log(`${fighter(m.by)} hits ${fighter(m.target)} for ${m.damage} (HP ${m.hp})`, "fight");
      if (m.target.kind === "player") {
        const p = world.players.get(m.target.name);
        if (p) p.hp = m.hp;
      }
      break;
    case "slain":
      log(`${m.by} slew NPC ${m.npc} (+${m.xp} xp)`, "good");
      break;
    case "died":
      log(`${m.player} was defeated by ${fighter(m.by)}`, "fight");
      break;
    case "hp": {
      const p = world.players.get(m.player);
      if (p) p.hp = m.hp;
      break;
    }
    case "chat":
      log(`${m.player}: ${m.text}`, "chat");
      break;
    case "travelled":
      log(`${m.player} left for the ${m.zone}`, "dim");
      break;
    case "transferred":
      if (replay) break; // a replay follows the room it was recorded in
      world.map = [];
      sessionStorage.setItem("gsl-ticket", JSON.stringify(m.ticket));
      room?.send({ type: "look" });
      break;
    case "error":
      log(`refused: ${m.error}`, "bad");
      break;
    case "room_ended":
      log(`the room ended: ${m.reason}`, "bad");
      sessionStorage.removeItem("gsl-ticket");
      break;
  }
  draw();
}

// ---- replays ----

/** The replay being watched: what the player got, where it stands, how fast it goes. */
let replay: { timeline: Timeline<Out>; at: number; next: number; speed: number; paused: boolean; timer: number } | null = null;

const clock = (ms: number) => `${Math.floor(ms / 60000)}:${String(Math.floor(ms / 1000) % 60).padStart(2, "0")}`;

/** Plays match `id` back as its first player (or this page's player, if it played) saw it. */
async function watchMatch(id: string, key?: string) {
  $("error").textContent = "";
  let record;
  try {
    record = await lobby.match(id, key);
  } catch (e) {
    return fail(e);
  }
  const timeline = timelineOf<Out>(record, me);
  room?.close();
  room = null;
  stopReplay();
  const speed = Number(($("replay-speed") as HTMLSelectElement).value) || 1;
  replay = { timeline, at: 0, next: 0, speed, paused: false, timer: 0 };
  startOver(timeline.player);
  $("lobby").hidden = true;
  $("game").hidden = false;
  $("replay").hidden = false;
  $("chat").hidden = true;
  $("status").textContent = `replay of ${record.match.name} as ${timeline.player}`;
  $("status").className = "";
  ($("replay-bar") as HTMLInputElement).max = String(timeline.length);
  let last = performance.now();
  replay.timer = window.setInterval(() => {
    const now = performance.now();
    if (replay && !replay.paused) playTo(replay.at + (now - last) * replay.speed);
    last = now;
  }, 50);
  playTo(0);
}

/** An empty view, as `player` would have it before the match. */
function startOver(player: string) {
  me = player;
  world.zone = "";
  world.map = [];
  world.players = new Map();
  world.npcs = [];
  world.items = [];
  $("log").replaceChildren();
}

/** Applies what the player got up to `to` ms; going back starts the view over first. */
function playTo(to: number) {
  if (!replay) return;
  const r = replay;
  to = Math.max(0, Math.min(to, r.timeline.length));
  if (to < r.at) {
    startOver(r.timeline.player);
    r.next = 0;
  }
  while (r.next < r.timeline.events.length && r.timeline.events[r.next].at <= to) {
    onMessage(r.timeline.events[r.next].message);
    r.next++;
  }
  r.at = to;
  ($("replay-bar") as HTMLInputElement).value = String(Math.round(to));
  const done = to >= r.timeline.length;
  $("replay-time").textContent = `${clock(to)} / ${clock(r.timeline.length)}${done ? " · the end" : ""}`;
  $("replay-pause").textContent = r.paused ? "▶" : "❚❚";
  draw();
}

function stopReplay() {
  if (replay) window.clearInterval(replay.timer);
  replay = null;
  $("replay").hidden = true;
  $("chat").hidden = false;
}

$("replay-pause").addEventListener("click", () => {
  if (!replay) return;
  replay.paused = !replay.paused;
  playTo(replay.at);
});
$("replay-speed").addEventListener("change", () => {
  if (replay) replay.speed = Number(($("replay-speed") as HTMLSelectElement).value) || 1;
});
$("replay-bar").addEventListener("input", () => playTo(Number(($("replay-bar") as HTMLInputElement).value)));

const COLOURS: Record<string, string> = { "#": "wall", O: "portal", ":": "arena" };

function draw() {
  const rows = world.map.map((r) => [...r].map((t) => [t, COLOURS[t] ?? "floor"]));
  const put = (x: number, y: number, ch: string, cls: string) => {
    if (rows[y]?.[x]) rows[y][x] = [ch, cls];
  };
  for (const item of world.items) put(item.x, item.y, item.kind === "coin" ? "$" : item.kind === "herb" ? "%" : "*", "item");
  for (const npc of world.npcs) put(npc.x, npc.y, npc.hp < NPC_HP ? "n" : "N", npc.hp < NPC_HP ? "npc-hurt" : "npc");
  for (const [name, p] of world.players) {
    put(p.x, p.y, name === me ? "@" : name[0].toLowerCase(), name === me ? "me" : p.away ? "away" : "other");
  }
  $("map").replaceChildren(
    ...rows.map((row) => {
      const line = el("div");
      for (const [ch, cls] of row) line.append(el("span", { class: cls }, ch));
      return line;
    }),
  );
  $("zone").textContent = world.zone || "waiting for the world…";
  $("players").replaceChildren(
    ...[...world.players].map(([name, p]) =>
      el("div", { class: name === me ? "me" : p.away ? "away" : "other", "data-player": name },
        `${name === me ? "@" : name[0].toLowerCase()} ${name}  level ${p.level}  HP ${p.hp}`),
    ),
  );
}

const MOVES: Record<string, [number, number]> = {
  ArrowUp: [0, -1], ArrowDown: [0, 1], ArrowLeft: [-1, 0], ArrowRight: [1, 0],
  w: [0, -1], s: [0, 1], a: [-1, 0], d: [1, 0],
};

document.addEventListener("keydown", (e) => {
  if (!room || $("game").hidden || document.activeElement === $("say")) return;
  const step = MOVES[e.key];
  if (step) {
    e.preventDefault();
    room.send({ type: "move", dx: step[0], dy: step[1] });
  } else if (e.key === "Enter") {
    e.preventDefault();
    $("say").focus();
  }
});

$("chat").addEventListener("submit", (e) => {
  e.preventDefault();
  const say = $("say") as HTMLInputElement;
  const text = say.value.trim();
  if (text && room) room.send({ type: "chat", text });
  say.value = "";
  say.blur();
});
$("play").addEventListener("click", () => play(() => lobby.quickPlay({ name: name(), key: key() })));
$("by-code").addEventListener("submit", (e) => {
  e.preventDefault();
  const code = ($("code") as HTMLInputElement).value.trim();
  play(() => lobby.quickPlay({ name: name(), key: key(), code }));
});
$("create").addEventListener("click", async () => {
  try {
    const made = await lobby.create(`${name()}'s room`);
    await play(() => lobby.join(made.id, me, key()));
  } catch (e) {
    fail(e);
  }
});
$("leave").addEventListener("click", () => {
  stopReplay();
  room?.close();
  room = null;
  sessionStorage.removeItem("gsl-ticket");
  void showLobby();
});

// A reload carries on with the ticket in hand (the room still has the seat).
const kept = sessionStorage.getItem("gsl-ticket");
if (kept) enter(JSON.parse(kept) as Ticket);
else void showLobby();
