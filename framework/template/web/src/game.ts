// The game in a browser: quick play for a seat, then the room's counter, its chat and
// its events. It talks to the lobby and the room through the framework's typed client
// (client.ts, on @stomp/stompjs); In and Out are generated from src/protocol.rs
// (bindings/, by `BLESS=1 cargo test --features ts`). `npm run build` bundles it into
// ../assets/game.js, which the server ships: players need no Node.js.

import { Lobby, newPlayerKey, RoomConnection, type Status } from "./client";
import type { Envelope } from "./bindings/Envelope";
import type { In } from "./bindings/In";
import type { Out } from "./bindings/Out";

const lobby = new Lobby();
let room: RoomConnection<In, Out> | undefined;

function element<T extends HTMLElement>(id: string): T {
  return document.getElementById(id) as T;
}

/** Adds a line to the log, newest at the bottom. */
function log(text: string): void {
  const line = document.createElement("li");
  line.textContent = text;
  const list = element<HTMLUListElement>("log");
  list.append(line);
  while (list.children.length > 100) list.firstElementChild?.remove();
  line.scrollIntoView({ block: "nearest" });
}

function show(status: Status, detail?: string): void {
  element("status").textContent = detail ? `${status}: ${detail}` : status;
  if (status === "closed") element<HTMLFieldSetElement>("controls").disabled = true;
}

/** Every message of the room: the game's own (Out) and the framework's. */
function receive(message: Envelope<Out>): void {
  switch (message.type) {
    case "count":
      element("count").textContent = String(message.count);
      if (message.by) log(`${message.by} made it ${message.count}`);
      break;
    case "said":
      log(`${message.player}: ${message.text}`);
      break;
    case "joined":
      log(`${message.player} joined`);
      break;
    case "rolled":
      log(`${message.player} rolled ${message.face} (d${message.sides})`);
      break;
    case "error":
      log(`refused: ${message.error}`);
      break;
    case "room_ended":
      log(`the room ended: ${message.reason}`);
      show("closed");
      room?.close();
      break;
  }
}

/** Quick play as the name in the form; the name's key is kept for the next visit. */
async function play(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  const name = element<HTMLInputElement>("name").value.trim();
  // Made and kept before the first join: a lost answer does not lose the name.
  const key = localStorage.getItem(`key:${name}`) ?? newPlayerKey(name);
  localStorage.setItem(`key:${name}`, key);
  try {
    const ticket = await lobby.quickPlay({ name, key });
    if (ticket.player_key) localStorage.setItem(`key:${name}`, ticket.player_key);
    room?.close();
    room = new RoomConnection<In, Out>(ticket, { onMessage: receive, onStatus: show });
    element("room").textContent = ticket.room;
    element<HTMLFieldSetElement>("controls").disabled = false;
  } catch (e) {
    log(`cannot play: ${(e as Error).message}`);
  }
}

function say(event: SubmitEvent): void {
  event.preventDefault();
  const text = element<HTMLInputElement>("text");
  if (text.value.trim()) room?.send({ type: "say", text: text.value });
  text.value = "";
}

element<HTMLFormElement>("join").addEventListener("submit", (e) => void play(e));
element<HTMLFormElement>("say").addEventListener("submit", say);
element("minus").addEventListener("click", () => room?.send({ type: "add", by: -1 }));
element("plus").addEventListener("click", () => room?.send({ type: "add", by: 1 }));
element("roll").addEventListener("click", () => room?.send({ type: "roll", sides: 6 }));
