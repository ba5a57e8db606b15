//! Just enough of SentencePiece's `ModelProto` (sentencepiece_model.proto) to rebuild its
//! tokenizer: the pieces with scores and types, the model type, and the precompiled
//! normalisation map. Unknown fields are skipped, as protobuf requires.

/// `SentencePiece.Type` values that matter here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Byte,
    Unused,
}

impl PieceKind {
    pub(super) fn from_proto(value: u64) -> Self {
        match value {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// The parts of a SentencePiece model the Unigram tokenizer needs.
#[derive(Clone, Debug, Default)]
pub struct SpmModel {
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 = UNIGRAM (the default), 2 = BPE, 3 = WORD, 4 = CHAR.
    pub model_type: u64,
    pub precompiled_charsmap: Vec<u8>,
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    Fixed64,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0_u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .buf
                .split_first()
                .ok_or("truncated varint in the SentencePiece model")?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("overlong varint in the SentencePiece model".to_owned())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        if len > self.buf.len() {
            return Err("a field runs past the end of the SentencePiece model".to_owned());
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// The next `(field number, value)`, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|e| e.to_string())?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let bytes = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            }
            wire => return Err(format!("unsupported protobuf wire type {wire}")),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn parse_piece(bytes: &[u8]) -> Result<Piece, String> {
    let mut piece = Piece {
        text: String::new(),
        score: 0.0,
        kind: PieceKind::Normal,
    };
    let mut reader = Reader { buf: bytes };
    while let Some((field, value)) = reader.field()? {
        match (field, value) {
            (1, Value::Bytes(text)) => {
                piece.text = String::from_utf8(text.to_vec())
                    .map_err(|_| "a piece is not valid UTF-8".to_owned())?;
            }
            (2, Value::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Value::Varint(kind)) => piece.kind = PieceKind::from_proto(kind),
            _ => {}
        }
    }
    Ok(piece)
}

impl SpmModel {
    /// Parses a serialized `ModelProto` (the bytes of `spiece.model`).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut model = Self {
            model_type: 1,
            ..Self::default()
        };
        let mut reader = Reader { buf: bytes };
        while let Some((field, value)) = reader.field()? {
            match (field, value) {
                (1, Value::Bytes(piece)) => model.pieces.push(parse_piece(piece)?),
                (2, Value::Bytes(trainer)) => {
                    let mut inner = Reader { buf: trainer };
                    while let Some((field, value)) = inner.field()? {
                        if let (3, Value::Varint(kind)) = (field, value) {
                            model.model_type = kind;
                        }
                    }
                }
                (3, Value::Bytes(normalizer)) => {
                    let mut inner = Reader { buf: normalizer };
                    while let Some((field, value)) = inner.field()? {
                        if let (2, Value::Bytes(map)) = (field, value) {
                            model.precompiled_charsmap = map.to_vec();
                        }
                    }
                }
                (_, Value::Varint(_) | Value::Bytes(_) | Value::Fixed32(_) | Value::Fixed64) => {}
            }
        }
        if model.pieces.is_empty() {
            return Err("this is not a SentencePiece model (it has no pieces)".to_owned());
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u8, wire: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3) | wire];
        if wire == 2 {
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn reads_pieces_scores_kinds_and_charsmap_and_skips_unknown_fields() {
        let mut piece = field(1, 2, "▁a".as_bytes());
        piece.extend(field(2, 5, &(-1.5_f32).to_le_bytes()));
        let mut control = field(1, 2, b"</s>");
        control.extend(field(3, 0, &[3]));
        let mut proto = field(1, 2, &piece);
        proto.extend(field(1, 2, &control));
        // trainer_spec: model_type = 1, byte_fallback (field 35, a two-byte key) = 1.
        proto.extend(field(2, 2, &[3 << 3, 1, 0x98, 0x02, 1]));
        proto.extend(field(3, 2, &field(2, 2, &[9, 8, 7])));
        proto.extend(field(9, 1, &[0; 8]));
        let model = SpmModel::parse(&proto).unwrap();
        assert_eq!(model.pieces[0].text, "▁a");
        assert_eq!(model.pieces[0].score, -1.5);
        assert_eq!(model.pieces[0].kind, PieceKind::Normal);
        assert_eq!(model.pieces[1].kind, PieceKind::Control);
        assert_eq!(model.model_type, 1);
        assert_eq!(model.precompiled_charsmap, [9, 8, 7]);
        assert!(SpmModel::parse(&proto[..proto.len() - 3]).is_err());
        assert!(SpmModel::parse(b"").is_err());
    }
}
