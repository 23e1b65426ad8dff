using System.Text.Json;
using DirBackup.Errors;
using DirBackup.Store;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Unit;

public sealed class BackupStoreTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly StorageBuilder _storage;
    private readonly BackupStore _store;

    public BackupStoreTests()
    {
        _storage = new StorageBuilder(_dir.Combine("store"));
        _store = new BackupStore(new StorageConfig("test", _storage.Root), new StoreSettings { LockWait = TimeSpan.FromMilliseconds(200) });
    }

    public void Dispose() => _dir.Dispose();

    private static JsonElement Value(string json) => JsonDocument.Parse(json).RootElement.Clone();

    private string Snapshot() => _storage.Snapshot();

    [Fact]
    public void Lists_committed_backups_and_skips_staging_and_foreign_directories()
    {
        _storage.AddVm(100, 1700000000);
        _storage.AddContainer(101, 1700000100);
        Directory.CreateDirectory(Path.Combine(_storage.Root, "100", ".staging-qemu-1700000500"));
        Directory.CreateDirectory(Path.Combine(_storage.Root, "100", "qemu-1700000600")); // no manifest: not a backup
        Directory.CreateDirectory(Path.Combine(_storage.Root, "lost+found"));
        Directory.CreateDirectory(Path.Combine(_storage.Root, "dump"));
        var warnings = new List<string>();

        var all = _store.ListBackups(null, warnings.Add);

        Assert.Equal(["backup/100/qemu-1700000000", "backup/101/lxc-1700000100"], all.Select(b => b.Volume.ToString()));
        Assert.Single(warnings);
        Assert.Contains("qemu-1700000600", warnings[0], StringComparison.Ordinal);
        Assert.Equal(["backup/101/lxc-1700000100"], _store.ListBackups(101).Select(b => b.Volume.ToString()));
        Assert.Empty(_store.ListBackups(555));
    }

    [Fact]
    public void A_listing_entry_has_every_key_pve_reads()
    {
        var base_ = _storage.AddVm(100, 1700000000, notes: "first");
        var child = _storage.AddVm(100, 1700000100, parent: "1700000000", isProtected: true);

        var info = _store.ToVolumeInfo(_store.ListBackups(100).Single(b => b.Volume == child.Volume));

        Assert.Equal("test:backup/100/qemu-1700000100", info.VolId);
        Assert.Equal(("backup", "dirbackup", "qemu", 100, 1700000100L), (info.Content, info.Format, info.SubType, info.VmId, info.CTime));
        Assert.Equal(child.Manifest.Size, info.Size);
        Assert.True(info.Protected);
        Assert.Equal("test:backup/100/qemu-1700000000", info.Parent);
        Assert.Equal("first", _store.ToVolumeInfo(_store.ListBackups(100)[0]).Notes);
        Assert.NotNull(base_);
    }

    [Fact]
    public async Task A_listing_shows_changes_made_right_after_the_previous_listing()
    {
        var b = _storage.AddVm(100, 1700000000);
        Assert.Null(_store.ListBackups(100).Single().Manifest.Notes);
        await _store.UpdateAttributeAsync(b.Volume, "notes", Value("\"changed\""), default);
        Assert.Equal("changed", _store.ListBackups(100).Single().Manifest.Notes);
    }

    [Fact]
    public void A_listing_notices_a_manifest_another_node_replaced()
    {
        var b = _storage.AddVm(100, 1700000000);
        Assert.Null(_store.ListBackups(100).Single().Manifest.Notes);
        var replaced = Manifest.FromBytes(File.ReadAllBytes(Path.Combine(b.Directory, Manifest.FileName)));
        replaced.Notes = "from node 2";
        File.WriteAllBytes(Path.Combine(b.Directory, "manifest.json.new"), replaced.ToBytes());
        File.Move(Path.Combine(b.Directory, "manifest.json.new"), Path.Combine(b.Directory, Manifest.FileName), overwrite: true);
        Directory.SetLastWriteTimeUtc(b.Directory, DateTime.UtcNow.AddSeconds(5));
        Assert.Equal("from node 2", _store.ListBackups(100).Single().Manifest.Notes);
    }

    [Fact]
    public async Task Notes_round_trip_as_text_and_an_empty_string_clears_them()
    {
        var b = _storage.AddVm(100, 1700000000);
        await _store.UpdateAttributeAsync(b.Volume, "notes", Value("\"Sicherung \\u2713\\nzweite Zeile\""), default);
        Assert.Equal("Sicherung \u2713\nzweite Zeile", _store.GetAttribute(b.Volume, "notes"));
        await _store.UpdateAttributeAsync(b.Volume, "notes", Value("\"\""), default);
        Assert.Null(_store.GetAttribute(b.Volume, "notes"));
    }

    [Theory]
    [InlineData("\"bell\\u0007\"", "control character")]
    [InlineData("\"\\ud800\"", "not valid UTF-8")]
    [InlineData("42", "must be a string")]
    public async Task Refuses_bad_notes_and_changes_nothing(string json, string expected)
    {
        var b = _storage.AddVm(100, 1700000000, notes: "keep me");
        var before = Snapshot();
        var e = await Assert.ThrowsAsync<DirBackupException>(() => _store.UpdateAttributeAsync(b.Volume, "notes", Value(json), default));
        Assert.Equal(ErrorCode.InvalidValue, e.Code);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.Equal(before, Snapshot());
    }

    [Fact]
    public async Task Refuses_notes_over_the_size_bound()
    {
        var b = _storage.AddVm(100, 1700000000);
        var before = Snapshot();
        var e = await Assert.ThrowsAsync<DirBackupException>(() =>
            _store.UpdateAttributeAsync(b.Volume, "notes", Value(JsonSerializer.Serialize(new string('n', 64 * 1024 + 1))), default));
        Assert.Contains("limit is 65536", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, Snapshot());
    }

    [Theory]
    [InlineData("1", true)]
    [InlineData("true", true)]
    [InlineData("\"1\"", true)]
    [InlineData("0", false)]
    [InlineData("false", false)]
    public async Task Protected_accepts_the_ways_perl_sends_a_flag(string json, bool expected)
    {
        var b = _storage.AddVm(100, 1700000000, isProtected: !expected);
        await _store.UpdateAttributeAsync(b.Volume, "protected", Value(json), default);
        Assert.Equal(expected, _store.GetAttribute(b.Volume, "protected"));
    }

    [Fact]
    public async Task An_unsupported_attribute_reads_as_null_and_cannot_be_written()
    {
        var b = _storage.AddVm(100, 1700000000);
        var before = Snapshot();
        Assert.Null(_store.GetAttribute(b.Volume, "colour"));
        var e = await Assert.ThrowsAsync<DirBackupException>(() => _store.UpdateAttributeAsync(b.Volume, "colour", Value("\"red\""), default));
        Assert.Equal(ErrorCode.UnsupportedAttribute, e.Code);
        Assert.Equal(before, Snapshot());
    }

    [Fact]
    public async Task Delete_refuses_a_protected_backup_and_keeps_it()
    {
        var b = _storage.AddVm(100, 1700000000, isProtected: true);
        var before = Snapshot();
        var e = await Assert.ThrowsAsync<DirBackupException>(() => _store.DeleteAsync(b.Volume, default));
        Assert.Equal(ErrorCode.Protected, e.Code);
        Assert.Equal(before, Snapshot());
    }

    [Fact]
    public async Task Delete_of_a_base_whose_successor_fails_the_chain_checks_is_refused_names_it_and_changes_nothing()
    {
        var base_ = _storage.AddVm(100, 1700000000); // images of 4 KiB of zeroes: not qcow2
        _storage.AddVm(100, 1700000100, parent: "1700000000");
        var before = Snapshot();
        var e = await Assert.ThrowsAsync<DirBackupException>(() => _store.DeleteAsync(base_.Volume, default));
        Assert.Equal(ErrorCode.IoError, e.Code);
        Assert.Contains("by merging it into 'backup/100/qemu-1700000100'", e.Message, StringComparison.Ordinal);
        Assert.Contains("is not a qcow2 image (no qcow2 magic)", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, Snapshot());
        Assert.Equal(2, _store.ListBackups(100).Count);
    }

    [Fact]
    public async Task Delete_removes_a_leaf_and_its_files()
    {
        _storage.AddVm(100, 1700000000);
        var leaf = _storage.AddVm(100, 1700000100, parent: "1700000000");
        await _store.DeleteAsync(leaf.Volume, default);
        Assert.False(Directory.Exists(leaf.Directory));
        Assert.Equal(["backup/100/qemu-1700000000"], _store.ListBackups(100).Select(b => b.Volume.ToString()));
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(_storage.Root, "100"), ".deleting-*"));
    }

    [Fact]
    public async Task Delete_of_a_missing_backup_is_not_found()
    {
        var e = await Assert.ThrowsAsync<DirBackupException>(() => _store.DeleteAsync(new VolumeName(100, GuestType.Qemu, 5), default));
        Assert.Equal(ErrorCode.NotFound, e.Code);
    }

    [Fact]
    public async Task A_held_guest_lock_makes_changes_answer_busy()
    {
        var b = _storage.AddVm(100, 1700000000);
        using (await _store.LockGuestAsync(100, default))
        {
            var e = await Assert.ThrowsAsync<DirBackupException>(() => _store.DeleteAsync(b.Volume, default));
            Assert.Equal(ErrorCode.Busy, e.Code);
        }
        await _store.DeleteAsync(b.Volume, default);
    }

    [Fact]
    public async Task A_missing_storage_path_is_a_clear_error()
    {
        var store = new BackupStore(new StorageConfig("gone", _dir.Combine("not-mounted")), new StoreSettings());
        var e = await Assert.ThrowsAsync<DirBackupException>(() => store.EnsureAvailableAsync(default));
        Assert.Equal(ErrorCode.StorageUnavailable, e.Code);
        Assert.Contains("does not exist", e.Message, StringComparison.Ordinal);
    }
}
