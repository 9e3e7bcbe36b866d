//! The `.fl` metadata file: an SQLite database with the tables of ThreeFold's `rfs`, plus
//! `zos_*` tables for what `rfs` cannot express. A reader that does not know the `zos_*`
//! tables still sees a complete, correct rfs flist (hardlinks appear as copies, times lose
//! their nanoseconds, xattrs are absent).

use crate::block::{BlockRef, Hash, BLOCK_SIZE};
use crate::error::{Error, Result};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Extended attributes of one entry: (name, value) pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// An inode number inside an flist. The root is always 1.
pub type Ino = u64;

/// The root directory's inode number.
pub const ROOT: Ino = 1;

/// The tables of the rfs format, as rfs creates them.
const RFS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inode (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER,
    name VARCHAR(255),
    size INTEGER,
    uid INTEGER,
    gid INTEGER,
    mode INTEGER,
    rdev INTEGER,
    ctime INTEGER,
    mtime INTEGER
);
CREATE INDEX IF NOT EXISTS parents ON inode (parent);
CREATE INDEX IF NOT EXISTS names ON inode (name);
CREATE TABLE IF NOT EXISTS extra (
    ino INTEGER PRIMARY KEY,
    data VARCHAR(4096)
);
CREATE TABLE IF NOT EXISTS block (
    ino INTEGER,
    id VARCHAR(32),
    key VARCHAR(32)
);
CREATE INDEX IF NOT EXISTS block_ino ON block (ino);
CREATE TABLE IF NOT EXISTS tag (
    key VARCHAR(10) PRIMARY KEY,
    value VARCHAR(255)
);
CREATE TABLE IF NOT EXISTS route (
    start integer,
    end integer,
    url VARCHAR(2048)
);
";

/// Our additions. `zos_inode` holds the sub-second part of the times and marks hardlinks
/// (`hardlink_of` is the ino whose content this name shares; its block rows are duplicated so
/// rfs still reads the file). `zos_xattr` holds extended attributes.
const ZOS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS zos_inode (
    ino INTEGER PRIMARY KEY,
    mtime_nsec INTEGER NOT NULL DEFAULT 0,
    ctime_nsec INTEGER NOT NULL DEFAULT 0,
    hardlink_of INTEGER
);
CREATE TABLE IF NOT EXISTS zos_xattr (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS zos_xattr_ino ON zos_xattr (ino);
";

/// The kind of an entry, from the file-type bits of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file with content blocks.
    File,
    /// A directory.
    Dir,
    /// A symbolic link; its target is in the `extra` table.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device (`rdev` holds its number).
    CharDevice,
    /// A block device (`rdev` holds its number).
    BlockDevice,
    /// A unix socket (recorded, never recreated: a socket file is useless without its server).
    Socket,
}

impl Kind {
    /// The kind encoded in a full `st_mode`, or `None` for bits that name no file type.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFSOCK => Kind::Socket,
            _ => return None,
        })
    }
}

/// One name in the flist with everything needed to recreate it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inode {
    /// Inode number (row id); 1 is the root.
    pub ino: Ino,
    /// The directory holding this name; 0 for the root.
    pub parent: Ino,
    /// The name in its directory, as raw bytes (Linux names need not be UTF-8).
    pub name: Vec<u8>,
    /// Content size in bytes (files) or target length (symlinks).
    pub size: u64,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Full `st_mode`: file type, setuid/setgid/sticky and permission bits.
    pub mode: u32,
    /// Device number for device nodes.
    pub rdev: u64,
    /// Change time, seconds since the epoch.
    pub ctime: i64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Sub-second part of `ctime`.
    pub ctime_nsec: u32,
    /// Sub-second part of `mtime`.
    pub mtime_nsec: u32,
    /// Symlink target.
    pub link_target: Option<Vec<u8>>,
    /// For the second and later names of a hardlinked file: the ino of the first name.
    pub hardlink_of: Option<Ino>,
}

impl Inode {
    /// The entry's kind, or an error naming it when the mode has no valid file type.
    pub fn kind(&self) -> Result<Kind> {
        Kind::from_mode(self.mode).ok_or_else(|| Error::UnsafeEntry {
            entry: String::from_utf8_lossy(&self.name).into_owned(),
            reason: format!("mode {:o} names no file type", self.mode),
        })
    }

    /// Permission bits including setuid, setgid and sticky.
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }

    /// The name for display.
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// `(major, minor)` of a character or block device; `None` for every other kind.
    pub fn device_numbers(&self) -> Option<(u32, u32)> {
        matches!(
            Kind::from_mode(self.mode),
            Some(Kind::CharDevice | Kind::BlockDevice)
        )
        .then(|| (libc::major(self.rdev), libc::minor(self.rdev)))
    }
}

/// A route: block ids whose first byte is in `start..=end` live in the store at `url`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    /// First id byte covered.
    pub start: u8,
    /// Last id byte covered (inclusive).
    pub end: u8,
    /// Store URL.
    pub url: String,
}

/// Counts and sizes reported by `inspect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Regular files (each hardlinked file once).
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Extra names of hardlinked files.
    pub hardlinks: u64,
    /// Fifos, devices and sockets.
    pub specials: u64,
    /// Bytes of file content, each hardlinked file counted once.
    pub total_bytes: u64,
    /// Bytes of distinct blocks: what the stores hold for this flist.
    pub unique_bytes: u64,
    /// Blocks of file content, each hardlinked file counted once (as `files` and
    /// `total_bytes` count it): the number pack and import report. A hardlink's block rows,
    /// copies of its first name's kept so that rfs restores the content, are not counted.
    pub blocks: u64,
    /// Distinct block ids: what the stores hold for this flist.
    pub unique_blocks: u64,
}

/// An open `.fl` file.
pub struct Flist {
    conn: Connection,
    path: PathBuf,
    has_zos: bool,
}

impl std::fmt::Debug for Flist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flist").field("path", &self.path).finish()
    }
}

const INODE_COLUMNS: &str = "i.ino, i.parent, i.name, i.size, i.uid, i.gid, i.mode, i.rdev, \
     i.ctime, i.mtime, e.data";

impl Flist {
    /// Opens an existing flist read-only and checks it has the rfs tables.
    pub fn open(path: &Path) -> Result<Flist> {
        Self::open_with(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
    }

    /// Opens an existing flist for editing tags and routes.
    pub fn open_rw(path: &Path) -> Result<Flist> {
        Self::open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    fn open_with(path: &Path, flags: OpenFlags) -> Result<Flist> {
        let not_flist = |reason: String| Error::NotAnFlist {
            path: path.to_owned(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| not_flist(e.to_string()))?;
        if !meta.is_file() {
            return Err(not_flist("not a regular file".into()));
        }
        check_length(path).map_err(not_flist)?;
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| not_flist(e.to_string()))?;
        let mut flist = Flist {
            conn,
            path: path.to_owned(),
            has_zos: false,
        };
        flist.check_schema().map_err(not_flist)?;
        Ok(flist)
    }

    /// Verifies the rfs tables and columns exist and the root is a directory.
    fn check_schema(&mut self) -> std::result::Result<(), String> {
        let required: [(&str, &[&str]); 5] = [
            (
                "inode",
                &[
                    "ino", "parent", "name", "size", "uid", "gid", "mode", "rdev", "ctime", "mtime",
                ],
            ),
            ("extra", &["ino", "data"]),
            ("block", &["ino", "id", "key"]),
            ("tag", &["key", "value"]),
            ("route", &["start", "end", "url"]),
        ];
        for (table, columns) in required {
            let present = self.columns(table).map_err(|e| e.to_string())?;
            if present.is_empty() {
                return Err(format!("table `{table}` is missing (wrong schema)"));
            }
            for column in columns {
                if !present.iter().any(|c| c == column) {
                    return Err(format!(
                        "table `{table}` has no column `{column}` (wrong schema)"
                    ));
                }
            }
        }
        let root: Option<i64> = self
            .conn
            .query_row("SELECT mode FROM inode WHERE ino = 1", [], |r| r.get(0))
            .optional()
            .map_err(|e| e.to_string())?;
        match root {
            Some(mode) if Kind::from_mode(mode as u32) == Some(Kind::Dir) => {}
            Some(_) => return Err("inode 1 (the root) is not a directory".into()),
            None => return Err("inode 1 (the root) is missing".into()),
        }
        let zos = self.columns("zos_inode").map_err(|e| e.to_string())?;
        let xattr = self.columns("zos_xattr").map_err(|e| e.to_string())?;
        self.has_zos = !zos.is_empty() && !xattr.is_empty();
        Ok(())
    }

    fn columns(&self, table: &str) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM pragma_table_info(?1)")?;
        let rows = stmt.query_map([table], |r| r.get::<_, String>(0))?;
        rows.collect()
    }

    /// The path this flist was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db<T>(&self, r: rusqlite::Result<T>) -> Result<T> {
        r.map_err(|source| Error::Metadata {
            path: self.path.clone(),
            source,
        })
    }

    fn select_inodes(&self, filter: &str) -> String {
        if self.has_zos {
            format!(
                "SELECT {INODE_COLUMNS}, z.mtime_nsec, z.ctime_nsec, z.hardlink_of FROM inode i \
                 LEFT JOIN extra e ON e.ino = i.ino LEFT JOIN zos_inode z ON z.ino = i.ino \
                 WHERE {filter}"
            )
        } else {
            format!(
                "SELECT {INODE_COLUMNS}, NULL, NULL, NULL FROM inode i \
                 LEFT JOIN extra e ON e.ino = i.ino WHERE {filter}"
            )
        }
    }

    /// One inode by number.
    pub fn inode(&self, ino: Ino) -> Result<Option<Inode>> {
        let sql = self.select_inodes("i.ino = ?1");
        let r = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row([ino as i64], row_to_inode).optional());
        self.db(r)
    }

    /// The entries of a directory, in inode order (the order they were packed in).
    pub fn children(&self, parent: Ino) -> Result<Vec<Inode>> {
        // The root's parent is 0; guarding against `ino = parent` keeps a malformed flist
        // from listing a directory inside itself.
        let sql = self.select_inodes("i.parent = ?1 AND i.ino != ?1 AND i.ino != 1 ORDER BY i.ino");
        let r = self.conn.prepare_cached(&sql).and_then(|mut s| {
            let rows = s.query_map([parent as i64], row_to_inode)?;
            rows.collect()
        });
        self.db(r)
    }

    /// The entry called `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Inode>> {
        // `+i.parent` keeps SQLite off the parent index: in a directory of 100,000 entries that
        // index leaves a scan of all of them per lookup, where the name index finds one or two.
        let sql = self.select_inodes("+i.parent = ?1 AND i.name = ?2 AND i.ino != 1");
        let r = self.conn.prepare_cached(&sql).and_then(|mut s| {
            let mut found = None;
            // Names may be stored as TEXT (rfs) or BLOB (ours, when not UTF-8); try both.
            if let Ok(text) = std::str::from_utf8(name) {
                found = s
                    .query_row(params![parent as i64, text], row_to_inode)
                    .optional()?;
            }
            if found.is_none() {
                found = s
                    .query_row(params![parent as i64, name], row_to_inode)
                    .optional()?;
            }
            Ok(found)
        });
        self.db(r)
    }

    /// Walks the tree depth-first from the root, calling `visit` with each entry's path
    /// relative to the root (empty for the root itself) before its children. Refuses, before
    /// visiting anything, an flist with entries under a non-directory, and during the walk any
    /// name that could step outside its directory.
    pub fn walk(&self, mut visit: impl FnMut(&Path, &Inode) -> Result<()>) -> Result<()> {
        self.refuse_entries_under_non_dirs()?;
        let root = self
            .inode(ROOT)?
            .ok_or_else(|| Error::Invalid("flist has no root".into()))?;
        visit(Path::new(""), &root)?;
        let mut stack = vec![(PathBuf::new(), ROOT)];
        while let Some((dir, ino)) = stack.pop() {
            for child in self.children(ino)? {
                check_name(&dir, &child.name)?;
                let path = dir.join(std::ffi::OsStr::from_bytes(&child.name));
                visit(&path, &child)?;
                if child.kind()? == Kind::Dir {
                    stack.push((path, child.ino));
                }
            }
        }
        Ok(())
    }

    fn refuse_entries_under_non_dirs(&self) -> Result<()> {
        let r = self
            .conn
            .query_row(
                "SELECT c.name, p.name FROM inode c JOIN inode p ON p.ino = c.parent \
                 WHERE (p.mode & 61440) != 16384 AND c.ino != 1 LIMIT 1",
                [],
                |r| Ok((bytes(r, 0)?, bytes(r, 1)?)),
            )
            .optional();
        if let Some((child, parent)) = self.db(r)? {
            return Err(Error::UnsafeEntry {
                entry: String::from_utf8_lossy(&child).into_owned(),
                reason: format!(
                    "it sits under {:?}, which is not a directory; writing it would go through a \
                     symlink or a file",
                    String::from_utf8_lossy(&parent)
                ),
            });
        }
        Ok(())
    }

    /// Finds an entry by its path inside the flist (`/etc/hostname`, `etc/hostname`, `/`).
    /// Symlinks are not followed: the link itself is returned.
    pub fn resolve(&self, path: &str) -> Result<Inode> {
        let mut node = self
            .inode(ROOT)?
            .ok_or_else(|| Error::Invalid("flist has no root".into()))?;
        let mut walked = String::new();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if node.kind()? != Kind::Dir {
                return Err(Error::Invalid(format!(
                    "{}: /{walked} is not a directory in the flist",
                    self.path.display()
                )));
            }
            walked.push_str(part);
            node = self.lookup(node.ino, part.as_bytes())?.ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: no such path in the flist: /{walked}",
                    self.path.display()
                ))
            })?;
            walked.push('/');
        }
        Ok(node)
    }

    /// The blocks of a file, in file order. Order is by rowid, never by chance.
    pub fn blocks(&self, ino: Ino) -> Result<Vec<BlockRef>> {
        let r = self
            .conn
            .prepare_cached("SELECT id, key FROM block WHERE ino = ?1 ORDER BY rowid")
            .and_then(|mut s| {
                let rows = s.query_map([ino as i64], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            });
        self.db(r)?
            .into_iter()
            .enumerate()
            .map(|(i, (id, key))| {
                let bad = |what: &str| Error::NotAnFlist {
                    path: self.path.clone(),
                    reason: format!("block {i} of inode {ino}: {what} is not 32 bytes"),
                };
                Ok(BlockRef {
                    id: Hash::try_from(id.as_slice()).map_err(|_| bad("id"))?,
                    key: Hash::try_from(key.as_slice()).map_err(|_| bad("key"))?,
                })
            })
            .collect()
    }

    /// Extended attributes of an inode.
    pub fn xattrs(&self, ino: Ino) -> Result<Xattrs> {
        if !self.has_zos {
            return Ok(Vec::new());
        }
        let r = self
            .conn
            .prepare_cached("SELECT name, value FROM zos_xattr WHERE ino = ?1 ORDER BY rowid")
            .and_then(|mut s| {
                let rows = s.query_map([ino as i64], |r| Ok((bytes(r, 0)?, bytes(r, 1)?)))?;
                rows.collect()
            });
        self.db(r)
    }

    /// For every inode that other names hardlink to: its total number of names.
    pub fn hardlink_counts(&self) -> Result<HashMap<Ino, u32>> {
        if !self.has_zos {
            return Ok(HashMap::new());
        }
        let r = self
            .conn
            .prepare(
                "SELECT hardlink_of, COUNT(*) + 1 FROM zos_inode WHERE hardlink_of IS NOT NULL \
                 GROUP BY hardlink_of",
            )
            .and_then(|mut s| {
                let rows = s.query_map([], |r| {
                    Ok((r.get::<_, i64>(0)? as Ino, r.get::<_, i64>(1)? as u32))
                })?;
                rows.collect()
            });
        self.db(r)
    }

    /// Inodes that have at least one extended attribute.
    pub fn inodes_with_xattrs(&self) -> Result<std::collections::HashSet<Ino>> {
        if !self.has_zos {
            return Ok(Default::default());
        }
        let r = self
            .conn
            .prepare("SELECT DISTINCT ino FROM zos_xattr")
            .and_then(|mut s| {
                let rows = s.query_map([], |r| r.get::<_, i64>(0).map(|v| v as Ino))?;
                rows.collect()
            });
        self.db(r)
    }

    /// All tags, sorted by key.
    pub fn tags(&self) -> Result<Vec<(String, String)>> {
        let r = self
            .conn
            .prepare("SELECT key, value FROM tag ORDER BY key")
            .and_then(|mut s| {
                let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            });
        self.db(r)
    }

    /// All routes, in the order they were added.
    pub fn routes(&self) -> Result<Vec<Route>> {
        let r = self
            .conn
            .prepare("SELECT start, end, url FROM route ORDER BY rowid")
            .and_then(|mut s| {
                let rows = s.query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            });
        self.db(r)?
            .into_iter()
            .map(|(start, end, url)| {
                let byte = |v: i64| {
                    u8::try_from(v).map_err(|_| Error::NotAnFlist {
                        path: self.path.clone(),
                        reason: format!("route {url}: range bound {v} is not a byte"),
                    })
                };
                Ok(Route {
                    start: byte(start)?,
                    end: byte(end)?,
                    url,
                })
            })
            .collect()
    }

    /// Sets (or replaces) a tag.
    pub fn set_tag(&self, key: &str, value: &str) -> Result<()> {
        self.db(set_tag(&self.conn, key, value))
    }

    /// Removes a tag; returns whether it existed.
    pub fn remove_tag(&self, key: &str) -> Result<bool> {
        let r = self.conn.execute("DELETE FROM tag WHERE key = ?1", [key]);
        self.db(r).map(|n| n > 0)
    }

    /// Adds a route.
    pub fn add_route(&self, route: &Route) -> Result<()> {
        self.db(add_route(&self.conn, route))
    }

    /// Removes every route with this URL; returns how many were removed.
    pub fn remove_route(&self, url: &str) -> Result<usize> {
        let r = self.conn.execute("DELETE FROM route WHERE url = ?1", [url]);
        self.db(r)
    }

    /// Counts entries and sizes without touching any store.
    pub fn stats(&self) -> Result<Stats> {
        let mut stats = Stats::default();
        let link_join = if self.has_zos {
            "LEFT JOIN zos_inode z ON z.ino = i.ino"
        } else {
            "LEFT JOIN (SELECT NULL AS ino, NULL AS hardlink_of) z ON z.ino = i.ino"
        };
        let sql =
            format!("SELECT i.mode, i.size, z.hardlink_of IS NOT NULL FROM inode i {link_join}");
        let r = self.conn.prepare(&sql).and_then(|mut s| {
            let mut rows = s.query([])?;
            while let Some(row) = rows.next()? {
                let mode: i64 = row.get(0)?;
                let size: i64 = row.get(1)?;
                let is_link: bool = row.get(2)?;
                match Kind::from_mode(mode as u32) {
                    _ if is_link => stats.hardlinks += 1,
                    Some(Kind::File) => {
                        stats.files += 1;
                        stats.total_bytes += size.max(0) as u64;
                    }
                    Some(Kind::Dir) => stats.dirs += 1,
                    Some(Kind::Symlink) => stats.symlinks += 1,
                    _ => stats.specials += 1,
                }
            }
            Ok(())
        });
        self.db(r)?;
        // A hardlink repeats its first name's block rows so that rfs restores a full copy;
        // those rows are left out of `blocks`, as the file is left out of `files`.
        let link_rows = if self.has_zos {
            "(SELECT COUNT(*) FROM block WHERE ino IN \
               (SELECT ino FROM zos_inode WHERE hardlink_of IS NOT NULL))"
        } else {
            "0"
        };
        // A block's plaintext length follows from its position in its file: every block is
        // BLOCK_SIZE except the last. Identical ids have identical content, so any one
        // occurrence gives the length.
        let sql = format!(
            "SELECT COUNT(*) - {link_rows}, COUNT(DISTINCT id), \
               (SELECT COALESCE(SUM(len), 0) FROM (SELECT id, MIN(len) AS len FROM (\
                  SELECT b.id AS id, MIN({bs}, i.size - {bs} * (ROW_NUMBER() OVER \
                    (PARTITION BY b.ino ORDER BY b.rowid) - 1)) AS len \
                  FROM block b JOIN inode i ON i.ino = b.ino) GROUP BY id)) \
             FROM block",
            bs = BLOCK_SIZE
        );
        let r = self.conn.query_row(&sql, [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        let (blocks, unique, unique_bytes) = self.db(r)?;
        stats.blocks = blocks as u64;
        stats.unique_blocks = unique as u64;
        stats.unique_bytes = unique_bytes.max(0) as u64;
        Ok(stats)
    }
}

/// Catches a truncated file up front, by its SQLite header rather than by reading every page
/// (which made opening a large flist, and so mounting it, cost time in its size). The header
/// records the page size and, when valid, the number of pages.
fn check_length(path: &Path) -> std::result::Result<(), String> {
    use std::io::Read;
    let mut header = [0u8; 100];
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Err("the file is empty".into());
    }
    if file.read_exact(&mut header).is_err() || &header[..16] != b"SQLite format 3\0" {
        return Err("not an SQLite database".into());
    }
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => u64::from(n),
    };
    let pages = u64::from(be32(28));
    // The page count is only trusted when written by a version that keeps it (offset 92
    // matches the change counter at 24), as SQLite itself does.
    if pages > 0 && be32(92) == be32(24) && len < pages * page_size {
        return Err(format!(
            "the file is truncated: its header says {} bytes, it has {len}",
            pages * page_size
        ));
    }
    Ok(())
}

fn set_tag(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO tag (key, value) VALUES (?1, ?2)",
        params![key, value],
    )
    .map(drop)
}

fn add_route(conn: &Connection, route: &Route) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO route (start, end, url) VALUES (?1, ?2, ?3)",
        params![route.start, route.end, route.url],
    )
    .map(drop)
}

/// Refuses names that are not a single path component: empty, `.`, `..`, or containing `/`
/// or NUL. Such a name in an flist can only be an attempt to write outside the target.
fn check_name(dir: &Path, name: &[u8]) -> Result<()> {
    let bad = match name {
        [] => Some("empty name"),
        b"." | b".." => Some("name is . or .."),
        _ if name.contains(&b'/') => Some("name contains '/'"),
        _ if name.contains(&0) => Some("name contains a NUL byte"),
        _ => None,
    };
    match bad {
        Some(reason) => Err(Error::UnsafeEntry {
            entry: format!("{}/{}", dir.display(), String::from_utf8_lossy(name)),
            reason: reason.into(),
        }),
        None => Ok(()),
    }
}

fn bytes(row: &Row<'_>, idx: usize) -> rusqlite::Result<Vec<u8>> {
    Ok(match row.get_ref(idx)? {
        ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
    })
}

fn row_to_inode(r: &Row<'_>) -> rusqlite::Result<Inode> {
    let int = |i: usize| -> rusqlite::Result<i64> { Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0)) };
    let link = r.get::<_, Option<Vec<u8>>>(10).or_else(|_| {
        // rfs stores symlink targets as TEXT; read either way.
        bytes(r, 10).map(Some)
    })?;
    Ok(Inode {
        ino: int(0)? as Ino,
        parent: int(1)? as Ino,
        name: bytes(r, 2)?,
        size: int(3)?.max(0) as u64,
        uid: int(4)? as u32,
        // rfs reads gid from the uid column; the gid column is the right one.
        gid: int(5)? as u32,
        mode: int(6)? as u32,
        rdev: int(7)? as u64,
        ctime: int(8)?,
        mtime: int(9)?,
        link_target: link,
        mtime_nsec: int(11)?.clamp(0, 999_999_999) as u32,
        ctime_nsec: int(12)?.clamp(0, 999_999_999) as u32,
        hardlink_of: r.get::<_, Option<i64>>(13)?.map(|v| v as Ino),
    })
}

/// Writes a new flist. Used by pack: rows go in one transaction, and the file only becomes
/// visible under its final name through [`FlistWriter::finish`].
pub struct FlistWriter {
    conn: Connection,
    path: PathBuf,
}

impl FlistWriter {
    /// Creates the schema in a new, empty file at `path`.
    pub fn create(path: &Path) -> Result<FlistWriter> {
        let conn = Connection::open(path).map_err(|source| Error::Metadata {
            path: path.to_owned(),
            source,
        })?;
        let w = FlistWriter {
            conn,
            path: path.to_owned(),
        };
        // The file is private until renamed into place, so durability per statement buys
        // nothing; one transaction and no journal make inserts cheap.
        let r = w.conn.execute_batch(&format!(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; {RFS_SCHEMA} {ZOS_SCHEMA} BEGIN;"
        ));
        w.db(r)?;
        Ok(w)
    }

    fn db<T>(&self, r: rusqlite::Result<T>) -> Result<T> {
        r.map_err(|source| Error::Metadata {
            path: self.path.clone(),
            source,
        })
    }

    /// Adds an inode and returns its number (the first one added is the root, ino 1).
    pub fn add_inode(&self, inode: &Inode) -> Result<Ino> {
        let name: rusqlite::types::Value = match std::str::from_utf8(&inode.name) {
            Ok(s) => s.to_owned().into(),
            Err(_) => inode.name.clone().into(),
        };
        let r = self
            .conn
            .prepare_cached(
                "INSERT INTO inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    inode.parent as i64,
                    name,
                    inode.size as i64,
                    inode.uid,
                    inode.gid,
                    inode.mode,
                    inode.rdev as i64,
                    inode.ctime,
                    inode.mtime
                ])
            });
        self.db(r)?;
        let ino = self.conn.last_insert_rowid() as Ino;
        if let Some(target) = &inode.link_target {
            let value: rusqlite::types::Value = match std::str::from_utf8(target) {
                Ok(s) => s.to_owned().into(),
                Err(_) => target.clone().into(),
            };
            let r = self
                .conn
                .prepare_cached("INSERT INTO extra (ino, data) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![ino as i64, value]));
            self.db(r)?;
        }
        if inode.mtime_nsec != 0 || inode.ctime_nsec != 0 || inode.hardlink_of.is_some() {
            let r = self
                .conn
                .prepare_cached(
                    "INSERT INTO zos_inode (ino, mtime_nsec, ctime_nsec, hardlink_of) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        ino as i64,
                        inode.mtime_nsec,
                        inode.ctime_nsec,
                        inode.hardlink_of.map(|v| v as i64)
                    ])
                });
            self.db(r)?;
        }
        Ok(ino)
    }

    /// Records an extended attribute.
    pub fn add_xattr(&self, ino: Ino, name: &[u8], value: &[u8]) -> Result<()> {
        let r = self
            .conn
            .prepare_cached("INSERT INTO zos_xattr (ino, name, value) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![ino as i64, name, value]));
        self.db(r).map(drop)
    }

    /// Records a file's blocks, in order.
    pub fn add_blocks(&self, ino: Ino, blocks: &[BlockRef]) -> Result<()> {
        let r = self
            .conn
            .prepare_cached("INSERT INTO block (ino, id, key) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| {
                for b in blocks {
                    s.execute(params![ino as i64, &b.id[..], &b.key[..]])?;
                }
                Ok(())
            });
        self.db(r)
    }

    /// Gives `to` the same blocks as `from` (a hardlink of an already packed file).
    pub fn copy_blocks(&self, from: Ino, to: Ino) -> Result<()> {
        let r = self.conn.execute(
            "INSERT INTO block (ino, id, key) SELECT ?2, id, key FROM block WHERE ino = ?1 \
             ORDER BY rowid",
            params![from as i64, to as i64],
        );
        self.db(r).map(drop)
    }

    /// Sets a tag.
    pub fn set_tag(&self, key: &str, value: &str) -> Result<()> {
        set_tag(&self.conn, key, value).map_err(|e| self.err(e))
    }

    /// Adds a route.
    pub fn add_route(&self, route: &Route) -> Result<()> {
        add_route(&self.conn, route).map_err(|e| self.err(e))
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        Error::Metadata {
            path: self.path.clone(),
            source,
        }
    }

    /// Commits everything and leaves the file in rfs's journal mode, ready to be renamed.
    pub fn finish(self) -> Result<()> {
        let r = self
            .conn
            .execute_batch("COMMIT; PRAGMA journal_mode = DELETE;");
        self.db(r)?;
        let path = self.path.clone();
        self.conn
            .close()
            .map_err(|(_, source)| Error::Metadata { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_only_for_devices() {
        let dev = |mode| Inode {
            mode,
            rdev: libc::makedev(259, 70_000),
            ..Inode::default()
        };
        assert_eq!(
            dev(libc::S_IFCHR | 0o600).device_numbers(),
            Some((259, 70_000))
        );
        assert_eq!(
            dev(libc::S_IFBLK | 0o600).device_numbers(),
            Some((259, 70_000))
        );
        assert_eq!(dev(libc::S_IFREG | 0o600).device_numbers(), None);
    }
}
