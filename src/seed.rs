//! The worked example of the blog post the crate grew from ("Masking attention weights",
//! Judit Ács, 2018): four sequences padded to six positions, lengths 4, 1, 6, 3.

/// Rows, columns and lengths of the example.
pub const ROWS: usize = 4;
/// Padded length.
pub const COLS: usize = 6;
/// Valid positions per row.
pub const LENGTHS: [i32; ROWS] = [4, 1, 6, 3];

/// The scores: `np.random.seed(1); np.random.random((4, 6)).round(1) * 2 + 3`.
pub const SCORES: [[f64; COLS]; ROWS] = [
    [3.8, 4.4, 3.0, 3.6, 3.2, 3.2],
    [3.4, 3.6, 3.8, 4.0, 3.8, 4.4],
    [3.4, 4.8, 3.0, 4.4, 3.8, 4.2],
    [3.2, 3.4, 4.6, 5.0, 3.6, 4.4],
];

/// The masked softmax as the post prints it (PyTorch, 4 decimals).
pub const PUBLISHED: [[f64; COLS]; ROWS] = [
    [0.2445, 0.4455, 0.1099, 0.2002, 0.0000, 0.0000],
    [1.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000],
    [0.0822, 0.3335, 0.0551, 0.2235, 0.1227, 0.1830],
    [0.1593, 0.1946, 0.6461, 0.0000, 0.0000, 0.0000],
];

/// The scores as one row-major buffer of `T`.
pub fn scores<T: crate::Real>() -> Vec<T> {
    SCORES.iter().flatten().map(|&v| T::from_f64(v)).collect()
}

/// Formats a `[rows, cols]` row-major buffer the way the post prints it (`cols` of 0
/// reads as 1).
pub fn format_table<T: crate::Real>(values: &[T], cols: usize) -> String {
    values
        .chunks(cols.max(1))
        .map(|row| {
            let cells: Vec<String> = row.iter().map(|v| format!("{:.4}", v.to_f64())).collect();
            format!("[{}]", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
