//! Drawing the [`App`]: `impl Widget for &App`, split into one function per screen part.

use crate::app::{App, ConnState, Focus, Screen};
use game_protocol::{level_of, max_hp, NPC_HP};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Clear, List, ListItem, ListState, Paragraph, StatefulWidget, Widget,
};

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        match self.screen {
            Screen::Name => render_name(self, area, buf),
            Screen::Lobby => render_lobby(self, area, buf),
            Screen::Game => render_game(self, area, buf),
        }
        if self.help {
            render_help(self, area, buf);
        }
    }
}

fn title<'a>(text: impl Into<std::borrow::Cow<'a, str>>) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(text, Style::new().bold()))
}

fn render_name(app: &App, area: Rect, buf: &mut Buffer) {
    let [_, middle, _] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(5),
        Constraint::Fill(1),
    ])
    .areas(area);
    let [_, boxed, _] = Layout::horizontal([
        Constraint::Fill(1),
        Constraint::Length(44),
        Constraint::Fill(1),
    ])
    .areas(middle);
    let lines = vec![
        Line::from(vec![
            "Your name: ".into(),
            Span::styled(format!("{}_", app.name_input), Style::new().bold()),
        ]),
        Line::from("letters, digits, - and _; Enter to go on".dim()),
    ];
    Paragraph::new(lines)
        .block(title(" game-server-less "))
        .render(boxed, buf);
}

fn render_lobby(app: &App, area: Rect, buf: &mut Buffer) {
    let [main, error, keys] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let [rooms_area, items_area] =
        Layout::horizontal([Constraint::Fill(2), Constraint::Fill(1)]).areas(main);

    let rooms: Vec<ListItem> = app
        .rooms
        .iter()
        .map(|r| {
            ListItem::new(format!(
                "{:<20} {:>3} online  ({})",
                truncate(&r.name, 20),
                r.players_online,
                r.id
            ))
        })
        .collect();
    let empty = rooms.is_empty();
    let list = List::new(rooms)
        .block(title(format!(" Rooms on {} ", app.server)))
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = ListState::default().with_selected((!empty).then_some(app.selected));
    StatefulWidget::render(list, rooms_area, buf, &mut state);
    if empty {
        let inner = rooms_area.inner(ratatui::layout::Margin::new(2, 1));
        Paragraph::new("No rooms yet: press p to play now, or c to create one.").render(inner, buf);
    }

    let xp = app.inventory.get("xp").copied().unwrap_or(0);
    let mut items = vec![
        Line::from(vec![
            Span::styled(format!("level {}", level_of(xp)), Style::new().bold()),
            format!("  {xp} xp").dim(),
        ]),
        Line::from(""),
    ];
    let things = app.inventory.iter().filter(|(k, _)| k.as_str() != "xp");
    items.extend(things.map(|(k, n)| Line::from(format!("{k:<10} {n:>4}"))));
    if items.len() == 2 {
        items.push(Line::from("no items yet".dim()));
    }
    Paragraph::new(items)
        .block(title(format!(" {} ", app.name)))
        .render(items_area, buf);

    if let Some(e) = &app.error {
        Paragraph::new(Span::styled(e.as_str(), Style::new().fg(Color::Red))).render(error, buf);
    }
    Paragraph::new(
        "p play now · ↑↓ select · Enter join · c create · r refresh · ? help · q quit".dim(),
    )
    .render(keys, buf);
}

fn render_game(app: &App, area: Rect, buf: &mut Buffer) {
    let [main, chat_area, input, status] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let [map_area, side] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(28)]).areas(main);
    let [players_area, events_area] =
        Layout::vertical([Constraint::Length(8), Constraint::Fill(1)]).areas(side);

    render_map(app, map_area, buf);

    let players: Vec<Line> = app
        .game
        .players
        .iter()
        .map(|(name, p)| {
            let style = if *name == app.name {
                Style::new().fg(Color::Green).bold()
            } else if p.away {
                Style::new().fg(Color::DarkGray)
            } else {
                Style::new().fg(Color::Cyan)
            };
            Line::from(vec![
                Span::styled(
                    format!("{} {}", glyph(name, &app.name), truncate(name, 12)),
                    style,
                ),
                format!(" L{} ", p.level).dim(),
                hp_span(p.hp, max_hp(p.level)),
            ])
        })
        .collect();
    Paragraph::new(players)
        .block(title(" Players "))
        .render(players_area, buf);
    render_log(app.game.events.iter(), " Events ", events_area, buf);
    render_log(app.game.chat.iter(), " Chat ", chat_area, buf);

    let prompt = match (&app.replay_bar, app.focus) {
        (Some(bar), _) => Line::from(vec![Span::styled(
            bar.clone(),
            Style::new().fg(Color::Yellow).bold(),
        )]),
        (None, focus) => match focus {
            Focus::Chat => Line::from(vec![
                Span::styled("say> ", Style::new().fg(Color::Yellow).bold()),
                format!("{}_", app.chat_input).into(),
            ]),
            Focus::Map => {
                Line::from("arrows/WASD move (into N: fight) · Enter chat · ? help · q leave".dim())
            }
        },
    };
    Paragraph::new(prompt).render(input, buf);
    render_status(app, status, buf);
}

fn render_log<'a>(
    lines: impl DoubleEndedIterator<Item = &'a String>,
    name: &str,
    area: Rect,
    buf: &mut Buffer,
) {
    let room = area.height.saturating_sub(2) as usize;
    let mut shown: Vec<Line> = lines
        .rev()
        .take(room)
        .map(|l| Line::from(l.as_str()))
        .collect();
    shown.reverse();
    // Not wrapped: a wrapped line would push the newest ones out of sight.
    Paragraph::new(shown).block(title(name)).render(area, buf);
}

/// A player's letter: `@` for you, the first letter of the name for others.
fn glyph(name: &str, me: &str) -> char {
    if name == me {
        '@'
    } else {
        name.chars().next().unwrap_or('?').to_ascii_lowercase()
    }
}

/// Draws the part of the map around the player, so large maps scroll.
fn render_map(app: &App, area: Rect, buf: &mut Buffer) {
    let name = match (&app.game.travelling, app.game.zone.as_str()) {
        (Some(to), from) => format!(" {from} → {to}… "),
        (None, "") => " Map ".to_owned(),
        (None, zone) => format!(" {zone} "),
    };
    let block = title(name);
    let inner = block.inner(area);
    block.render(area, buf);
    let game = &app.game;
    if !game.synced && game.map.is_empty() {
        Paragraph::new("waiting for the world…").render(inner, buf);
        return;
    }
    let (w, h) = (inner.width as i32, inner.height as i32);
    let map_w = game.map.iter().map(|r| r.len()).max().unwrap_or(0) as i32;
    let map_h = game.map.len() as i32;
    let (cx, cy) = app.me().unwrap_or((map_w / 2, map_h / 2));
    // The top-left map cell shown: centred on the player, clamped to the map's edges.
    let left = (cx - w / 2).clamp(0, (map_w - w).max(0));
    let top = (cy - h / 2).clamp(0, (map_h - h).max(0));
    let put = |buf: &mut Buffer, x: i32, y: i32, ch: char, style: Style| {
        let (sx, sy) = (x - left, y - top);
        if (0..w).contains(&sx) && (0..h).contains(&sy) {
            if let Some(cell) = buf.cell_mut((inner.x + sx as u16, inner.y + sy as u16)) {
                cell.set_char(ch).set_style(style);
            }
        }
    };
    for (y, row) in game.map.iter().enumerate() {
        for (x, t) in row.chars().enumerate() {
            let style = match t {
                '#' => Style::new().fg(Color::DarkGray),
                'O' => Style::new().fg(Color::Blue).bold(),
                ':' => Style::new().fg(Color::Red),
                _ => Style::new().fg(Color::Gray).add_modifier(Modifier::DIM),
            };
            put(buf, x as i32, y as i32, t, style);
        }
    }
    for item in &game.items {
        let ch = match item.kind.as_str() {
            "coin" => '$',
            "herb" => '%',
            _ => '*',
        };
        put(
            buf,
            item.x,
            item.y,
            ch,
            Style::new().fg(Color::Yellow).bold(),
        );
    }
    for npc in &game.npcs {
        // Hurt NPCs show in lower case (and red), so fights read without colour too.
        let (ch, colour) = if npc.hp < NPC_HP {
            ('n', Color::Red)
        } else {
            ('N', Color::Magenta)
        };
        put(buf, npc.x, npc.y, ch, Style::new().fg(colour).bold());
    }
    for (name, at) in &game.players {
        let style = if *name == app.name {
            Style::new().fg(Color::Green).bold()
        } else if at.away {
            // Dropped: greyed out until it is back or gone.
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new().fg(Color::Cyan).bold()
        };
        put(buf, at.x, at.y, glyph(name, &app.name), style);
    }
}

fn render_status(app: &App, area: Rect, buf: &mut Buffer) {
    let (dot, state) = match &app.conn {
        ConnState::Online => (
            Span::styled("●", Style::new().fg(Color::Green)),
            "online".to_owned(),
        ),
        ConnState::Connecting => (
            Span::styled("○", Style::new().fg(Color::Yellow)),
            "connecting".to_owned(),
        ),
        ConnState::Reconnecting(_) => (
            Span::styled("○", Style::new().fg(Color::Red)),
            "reconnecting".to_owned(),
        ),
    };
    let rtt = app.rtt.map_or("-".to_owned(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    });
    let mut spans = vec![dot, format!(" {state}").into()];
    if app.replay_bar.is_some() {
        // What the time bar's keys are, and whose view it is.
        let mut spans = vec!["replay".bold()];
        if let Some((x, y)) = app.me() {
            spans.push(format!(" | {} at {x},{y}", app.name).into());
        }
        spans.push(" | space pause · +/- speed · ←/→ 5 s · 0-9 jump · q quits".into());
        Paragraph::new(Line::from(spans))
            .style(Style::new().add_modifier(Modifier::REVERSED))
            .render(area, buf);
        return;
    }
    if app.watching {
        spans.push(" | watching (q quits)".into());
    }
    if let Some((hp, max, level)) = app.my_health() {
        spans.push(format!(" | L{level} ").into());
        spans.push(hp_span(hp, max));
    }
    if let Some((x, y)) = app.me() {
        spans.push(format!(" | {} at {x},{y}", app.name).into());
    }
    spans.push(
        format!(
            " | room {} | {} online | rtt {rtt} | seq {}",
            app.game.room,
            app.game.players.len(),
            app.game.seq
        )
        .into(),
    );
    if app.pending > 0 {
        spans.push(Span::styled(
            format!(" | {} unsent", app.pending),
            Style::new().fg(Color::Yellow),
        ));
    }
    Paragraph::new(Line::from(spans))
        .style(Style::new().add_modifier(Modifier::REVERSED))
        .render(area, buf);
}

/// Hit points as `HP 7/12`, green, yellow or red as they run out.
fn hp_span(hp: i32, max: i32) -> Span<'static> {
    let colour = match hp * 3 {
        n if n > max * 2 => Color::Green,
        n if n > max => Color::Yellow,
        _ => Color::Red,
    };
    Span::styled(format!("HP {hp}/{max}"), Style::new().fg(colour))
}

fn render_help(_: &App, area: Rect, buf: &mut Buffer) {
    let lines = vec![
        Line::from("Lobby: p play now (any open room),"),
        Line::from("       ↑↓ select, Enter join, c create,"),
        Line::from("       r refresh, q quit"),
        Line::from("Game:  arrows or WASD move"),
        Line::from("       Enter or Tab: chat (Enter sends,"),
        Line::from("       Esc cancels)"),
        Line::from("       q or Esc: back to the lobby"),
        Line::from("       walk into an N to fight it; in the"),
        Line::from("       arena (:) into players too"),
        Line::from("       O: a portal to the other zone"),
        Line::from("Ctrl-C quits from anywhere."),
        Line::from(""),
        Line::from(vec![
            "@".green().bold(),
            " you  ".into(),
            "a".cyan().bold(),
            " others  ".into(),
            "N".magenta().bold(),
            " NPC ".into(),
            "n".red().bold(),
            " hurt".into(),
        ]),
        Line::from(vec![
            "* $ %".yellow().bold(),
            " items (gem, coin, herb)  ".into(),
            "#".dark_gray(),
            " wall".into(),
        ]),
        Line::from(vec![
            "O".blue().bold(),
            " portal  ".into(),
            ":".red(),
            " arena  ".into(),
            "HP 7/12".green(),
            " your health".into(),
        ]),
        Line::from(""),
        Line::from("any key closes this".dim()),
    ];
    // As wide and tall as the text and its border, centred; smaller only on a screen
    // smaller than that.
    let w = (lines.iter().map(Line::width).max().unwrap_or(0) as u16 + 2).min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let r = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    Clear.render(r, buf);
    Paragraph::new(lines).block(title(" Help ")).render(r, buf);
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::NetEvent;
    use game_server_less_client::proto::RoomView;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn screen(app: &App, w: u16, h: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| f.render_widget(app, f.area())).unwrap();
        let buf = terminal.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn the_lobby_lists_rooms_and_items() {
        let mut app = App::new("http://127.0.0.1:8080", Some("ann"));
        app.on_net(NetEvent::Rooms(vec![RoomView {
            players_hidden: None,
            owner_token: None,
            id: "abcd1234".into(),
            name: "castle".into(),
            players: vec!["bob".into()],
            players_online: 1,
            created_at: 0,
            ..RoomView::default()
        }]));
        let items = [("gem".to_owned(), 3), ("xp".to_owned(), 60)];
        app.on_net(NetEvent::Inventory(items.into()));
        let lines = screen(&app, 80, 24);
        assert!(
            lines[0].contains("Rooms on http://127.0.0.1:8080"),
            "{lines:#?}"
        );
        assert!(
            lines[1].contains("> castle") && lines[1].contains("1 online  (abcd1234)"),
            "{lines:#?}"
        );
        assert!(
            lines[1].contains("level 2") && lines[1].contains("60 xp"),
            "experience shows as a level: {lines:#?}"
        );
        assert!(
            lines[3].contains("gem") && lines[3].contains('3'),
            "{lines:#?}"
        );
        assert!(lines[23].contains("Enter join"));
    }

    #[test]
    fn the_game_draws_the_map_around_the_player_and_the_status() {
        let mut app = crate::app::tests::in_game();
        app.on_net(NetEvent::Connection(ConnState::Online));
        app.on_net(NetEvent::Rtt(std::time::Duration::from_micros(420)));
        let lines = screen(&app, 80, 24);
        assert!(lines[1].contains("#####"), "{lines:#?}");
        assert!(lines[2].contains("#@*b#"), "me, an item, bob: {lines:#?}");
        let status = &lines[23];
        assert!(
            status.contains("online | L1 HP 10/10 | ann at 1,1 | room r1 | 2 online | rtt 0.4 ms"),
            "{status}"
        );
    }

    #[test]
    fn a_large_map_scrolls_to_keep_the_player_in_view() {
        let mut app = crate::app::tests::in_game();
        let row = format!("#{}#", ".".repeat(300));
        app.game.map = vec![row; 100];
        let me = app.game.players.get_mut("ann").unwrap();
        (me.x, me.y) = (250, 90);
        let lines = screen(&app, 80, 24);
        assert!(lines.iter().any(|l| l.contains('@')), "{lines:#?}");
    }

    #[test]
    fn every_screen_renders_at_any_size_without_panicking() {
        let mut screens = vec![
            App::new("http://x", None),
            App::new("http://x", Some("ann")),
        ];
        let mut game = crate::app::tests::in_game();
        game.help = true;
        screens.push(game);
        screens.push(crate::app::tests::in_game());
        for app in &screens {
            for (w, h) in [(1, 1), (3, 2), (10, 5), (20, 8), (80, 24), (250, 70)] {
                screen(app, w, h);
            }
        }
    }

    #[test]
    fn help_and_chat_prompt_render() {
        let mut app = crate::app::tests::in_game();
        app.help = true;
        let help = screen(&app, 80, 24).join("\n");
        // Every line whole in an 80×24 terminal: none clipped at the box's edge.
        for line in [
            "Lobby: p play now (any open room),",
            "↑↓ select, Enter join, c create,",
            "r refresh, q quit",
            "arrows or WASD move",
            "Enter or Tab: chat (Enter sends,",
            "Esc cancels)",
            "q or Esc: back to the lobby",
            "walk into an N to fight it; in the",
            "arena (:) into players too",
            "O: a portal to the other zone",
            "Ctrl-C quits from anywhere.",
            "items (gem, coin, herb)",
            "portal",
            "your health",
            "any key closes this",
        ] {
            assert!(help.contains(line), "{line:?} is not whole in:\n{help}");
        }
        app.help = false;
        app.focus = Focus::Chat;
        app.chat_input = "hello".into();
        assert!(screen(&app, 80, 24)[22].contains("say> hello_"));
    }
}
