//! Plain-text rendering shared by the commands: kubectl's aligned tables
//! (three spaces between columns) and its human durations (`45s`, `3m12s`,
//! `5h`, `12d`), relative to now.

use chrono::{DateTime, Utc};

/// Render rows under headers, every column padded to its widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("   ");
            }
            text.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// kubectl's `HumanDuration`: two significant units for short spans, one for long ones.
pub(crate) fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0);
    let (m, h, day) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        let rest = m % 60;
        if rest == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rest}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if day < 8 {
        let rest = h % 24;
        if rest == 0 {
            format!("{day}d")
        } else {
            format!("{day}d{rest}h")
        }
    } else if day < 365 * 2 {
        format!("{day}d")
    } else {
        let (y, rest) = (day / 365, day % 365);
        if rest == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{rest}d")
        }
    }
}

/// `3m ago` for the past, `in 3m` for the future.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if t <= now {
        format!("{} ago", human_duration(now - t))
    } else {
        format!("in {}", human_duration(t - now))
    }
}

/// A relative time, or `-` when unknown.
pub(crate) fn relative_or_dash(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| relative(t, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn durations_read_like_kubectl() {
        let cases = [
            (Duration::seconds(0), "0s"),
            (Duration::seconds(45), "45s"),
            (Duration::seconds(119), "119s"),
            (Duration::seconds(192), "3m12s"),
            (Duration::minutes(5), "5m"),
            (Duration::minutes(95), "95m"),
            (Duration::minutes(5 * 60 + 7), "5h7m"),
            (Duration::hours(30), "30h"),
            (Duration::hours(3 * 24 + 4), "3d4h"),
            (Duration::days(29), "29d"),
            (Duration::days(800), "2y70d"),
            (Duration::seconds(-5), "0s"),
        ];
        for (d, want) in cases {
            assert_eq!(human_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn relative_times_say_which_way() {
        let now = Utc::now();
        assert_eq!(relative(now - Duration::minutes(3), now), "3m ago");
        assert_eq!(relative(now + Duration::days(12), now), "in 12d");
        assert_eq!(relative_or_dash(None, now), "-");
    }

    #[test]
    fn columns_align_and_lines_have_no_trailing_blanks() {
        let out = render(
            &["NAME", "READY"],
            &[
                vec!["a-long-name".into(), "True".into()],
                vec!["b".into(), "False".into()],
            ],
        );
        assert_eq!(
            out,
            "NAME          READY\na-long-name   True\nb             False\n"
        );
    }
}
