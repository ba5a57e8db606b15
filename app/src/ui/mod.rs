//! Drawing helpers shared by the panels: the theme (the only place colours are chosen).

pub mod theme;
