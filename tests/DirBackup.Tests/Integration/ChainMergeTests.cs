using DirBackup.Errors;
using DirBackup.Qemu;
using DirBackup.Restore;
using DirBackup.Store;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Integration;

/// <summary>
/// Deleting a backup that newer ones are layered on merges it into them, with real qcow2 chains: every backup
/// that stays must read exactly as before, by its catalog chain, and a merge cut short must stay hidden until
/// the next delete or prune finishes it.
/// </summary>
public sealed class ChainMergeTests : IDisposable
{
    private const string Device = "drive-scsi0";
    private readonly TempDir _dir = new();
    private readonly StorageBuilder _storage;
    private readonly BackupStore _store;
    private readonly List<string> _log = [];

    public ChainMergeTests()
    {
        _storage = new StorageBuilder(_dir.Combine("store"));
        _store = new BackupStore(new StorageConfig("test", _storage.Root), new StoreSettings { LockWait = TimeSpan.FromMilliseconds(200) });
    }

    public void Dispose() => _dir.Dispose();

    private Task Log(string message)
    {
        _log.Add(message);
        return Task.CompletedTask;
    }

    /// <summary>
    /// A full backup and two incrementals. The second one writes zeroes over data of the first, which must stay
    /// zero when the full one is merged away beneath it.
    /// </summary>
    private async Task<(PreparedBackup Full, PreparedBackup First, PreparedBackup Second)> ChainAsync()
    {
        var full = await _storage.AddVmWithImageAsync(100, 1700000000, null, "write -P 1 0 2M", "write -P 9 3M 1M");
        var first = await _storage.AddVmWithImageAsync(100, 1700086400, "1700000000", "write -P 2 1M 1M", "write -z 3M 512K");
        var second = await _storage.AddVmWithImageAsync(100, 1700172800, "1700086400", "write -P 3 1536K 64K");
        return (full, first, second);
    }

    private static string Image(PreparedBackup backup) => Path.Combine(backup.Directory, Device + ".qcow2");

    /// <summary>What the backup reads as now, through its own headers (the test wrote them).</summary>
    private async Task<string> ContentOfAsync(PreparedBackup backup)
    {
        var raw = _dir.Combine($"{backup.Volume.BackupDirName}-{Guid.NewGuid():N}.raw");
        await SourceDisk.Run("qemu-img", "convert", "-O", "raw", Image(backup), raw);
        return raw;
    }

    /// <summary>The catalog's chain passes the restore's checks, and its top reads exactly as <paramref name="expected"/>.</summary>
    private async Task AssertReadsAsAsync(PreparedBackup backup, string expected)
    {
        var layers = ChainBuilder.Build(_store, backup.Volume, Device);
        Assert.Equal(Image(backup), layers[^1].Path);
        await SourceDisk.Run("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", expected, Image(backup));
    }

    /// <summary>The delete fails with this code and message, and not one file of the storage changed.</summary>
    private async Task AssertDeleteRefusedAsync(PreparedBackup backup, ErrorCode code, string why)
    {
        var before = _storage.Snapshot();
        var e = await Assert.ThrowsAsync<DirBackupException>(() => _store.DeleteAsync(backup.Volume, default));
        Assert.Equal(code, e.Code);
        Assert.Contains(why, e.Message, StringComparison.Ordinal);
        Assert.Equal(before, _storage.Snapshot());
    }

    private string? ParentOf(PreparedBackup backup) => _store.ReadManifest(backup.Volume).Devices.Single().Parent;

    [Fact]
    public async Task Deleting_a_full_base_merges_it_into_the_next_backup_which_reads_as_before_and_becomes_full()
    {
        var (full, first, second) = await ChainAsync();
        var firstBefore = await ContentOfAsync(first);
        var secondBefore = await ContentOfAsync(second);

        await _store.DeleteAsync(full.Volume, default, Log);

        Assert.False(Directory.Exists(full.Directory));
        Assert.Equal(["backup/100/qemu-1700086400", "backup/100/qemu-1700172800"], _store.ListBackups(100).Select(b => b.Volume.ToString()));
        Assert.Null(ParentOf(first));
        Assert.Null((await QemuImgInfo.ReadAsync(Image(first))).BackingFile);
        Assert.Equal("qemu-1700086400", ParentOf(second));
        Assert.Equal(BackupStore.OwnFilesSize(first.Directory), _store.ReadManifest(first.Volume).Size);
        Assert.True(_store.ReadManifest(first.Volume).Size > first.Manifest.Size, "the merged image holds the full backup's data now");
        await AssertReadsAsAsync(first, firstBefore);
        await AssertReadsAsAsync(second, secondBefore);
        Assert.Equal(["merging 'test:backup/100/qemu-1700000000' into 'test:backup/100/qemu-1700086400' (drive-scsi0)"], _log);
    }

    [Fact]
    public async Task Deleting_a_middle_backup_merges_it_into_its_successor_which_then_rests_on_the_full_one()
    {
        var (full, first, second) = await ChainAsync();
        var fullBefore = await ContentOfAsync(full);
        var secondBefore = await ContentOfAsync(second);
        var fullImage = File.ReadAllBytes(Image(full));

        await _store.DeleteAsync(first.Volume, default);

        Assert.False(Directory.Exists(first.Directory));
        Assert.Equal("qemu-1700000000", ParentOf(second));
        Assert.Equal("../qemu-1700000000/drive-scsi0.qcow2", (await QemuImgInfo.ReadAsync(Image(second))).BackingFile);
        Assert.Equal(fullImage, File.ReadAllBytes(Image(full)));
        await AssertReadsAsAsync(full, fullBefore);
        await AssertReadsAsAsync(second, secondBefore);
    }

    [Fact]
    public async Task A_merge_is_refused_while_a_backup_of_the_guest_is_being_restored_and_nothing_changes()
    {
        var (full, _, second) = await ChainAsync();
        InUse.Acquire(_storage.Root, second.Volume);
        try
        {
            await AssertDeleteRefusedAsync(full, ErrorCode.Busy, "the restore of 'backup/100/qemu-1700172800'");
        }
        finally
        {
            InUse.ReleaseAll(_storage.Root, second.Volume);
        }
        await _store.DeleteAsync(full.Volume, default);
        Assert.False(Directory.Exists(full.Directory));
    }

    [Fact]
    public void A_restore_is_refused_while_a_merge_runs_in_its_guest_and_allowed_after()
    {
        var merged = new VolumeName(100, GuestType.Qemu, 1700000000);
        var restored = new VolumeName(100, GuestType.Qemu, 1700172800);
        var otherGuest = new VolumeName(101, GuestType.Qemu, 1700172800);
        Directory.CreateDirectory(Path.Combine(_storage.Root, "100"));
        Directory.CreateDirectory(Path.Combine(_storage.Root, "101"));
        using (var merge = InUse.BeginDelete(_storage.Root, merged))
        {
            merge.ExcludeRestoresOfGuest();
            var e = Assert.Throws<DirBackupException>(() => InUse.Acquire(_storage.Root, restored));
            Assert.Equal(ErrorCode.Busy, e.Code);
            Assert.False(InUse.IsInUse(_storage.Root, restored));
            InUse.Acquire(_storage.Root, otherGuest);
            InUse.ReleaseAll(_storage.Root, otherGuest);
        }
        InUse.Acquire(_storage.Root, restored);
        Assert.True(InUse.IsInUse(_storage.Root, restored));
        InUse.ReleaseAll(_storage.Root, restored);
    }

    [Fact]
    public void A_vm_and_a_container_backup_of_one_guest_id_and_time_are_locked_apart()
    {
        var vm = new VolumeName(100, GuestType.Qemu, 1700000000);
        var container = new VolumeName(100, GuestType.Lxc, 1700000000);
        Directory.CreateDirectory(Path.Combine(_storage.Root, "100"));
        using (InUse.BeginDelete(_storage.Root, vm))
        {
            Assert.Equal(ErrorCode.Busy, Assert.Throws<DirBackupException>(() => InUse.Acquire(_storage.Root, vm)).Code);
            InUse.Acquire(_storage.Root, container);
            InUse.ReleaseAll(_storage.Root, container);
        }
    }

    [Fact]
    public async Task A_restore_from_a_storage_mounted_read_only_needs_no_lock_file()
    {
        var (_, _, second) = await ChainAsync();
        File.Delete(Path.Combine(_storage.Root, "100", InUse.FileName));
        await SourceDisk.Run("mount", "--bind", "-o", "ro", _storage.Root, _storage.Root);
        try
        {
            InUse.Acquire(_storage.Root, second.Volume);
            Assert.True(InUse.IsInUse(_storage.Root, second.Volume));
            InUse.ReleaseAll(_storage.Root, second.Volume);
            Assert.False(File.Exists(Path.Combine(_storage.Root, "100", InUse.FileName)));
        }
        finally
        {
            await SourceDisk.Run("umount", _storage.Root);
        }
    }

    [Fact]
    public async Task A_lock_file_this_node_may_not_write_lets_restores_through_and_refuses_deletes_clearly()
    {
        var (full, _, second) = await ChainAsync();
        var lockFile = Path.Combine(_storage.Root, "100", InUse.FileName);
        File.WriteAllBytes(lockFile, []);
        // Root cannot open an immutable file for writing: as near as root gets to an NFS export that squashes root.
        await SourceDisk.Run("chattr", "+i", lockFile);
        try
        {
            InUse.Acquire(_storage.Root, second.Volume);
            Assert.True(InUse.IsInUse(_storage.Root, second.Volume));
            InUse.ReleaseAll(_storage.Root, second.Volume);
            var e = await Assert.ThrowsAsync<DirBackupException>(() => _store.DeleteAsync(full.Volume, default));
            Assert.Equal(ErrorCode.IoError, e.Code);
            Assert.StartsWith($"cannot open the restore lock '{lockFile}': ", e.Message, StringComparison.Ordinal);
            Assert.DoesNotContain('\n', e.Message);
            Assert.True(Directory.Exists(full.Directory));
        }
        finally
        {
            await SourceDisk.Run("chattr", "-i", lockFile);
        }
    }

    /// <summary>What a backup of guest 100 writes first: its staging directory with a manifest naming its parent.</summary>
    private string StageBackup(long time, string parent)
    {
        var staging = Path.Combine(_storage.Root, "100", BackupStore.StagingPrefix + $"qemu-{time}");
        Directory.CreateDirectory(staging);
        File.WriteAllBytes(Path.Combine(staging, Manifest.FileName), new Manifest
        {
            VmId = 100, Type = "qemu", BackupTime = time,
            Devices = [new ManifestDevice { Name = Device, Size = 4L << 30, File = Device + ".qcow2", Parent = parent }],
        }.ToBytes());
        return staging;
    }

    [Fact]
    public async Task A_merge_is_refused_while_a_backup_of_the_guest_is_in_progress_and_nothing_changes()
    {
        var (full, _, _) = await ChainAsync();
        StageBackup(1700259200, "qemu-1700172800");
        using var running = await FileLock.AcquireAsync(_store.BackupLockPath(100), "a backup", TimeSpan.Zero, default);

        await AssertDeleteRefusedAsync(full, ErrorCode.Busy, "a backup of guest 100 is in progress");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_staging_directory_a_crash_left_does_not_block_a_merge_and_goes(bool byPrune)
    {
        var (full, first, second) = await ChainAsync();
        var firstBefore = await ContentOfAsync(first);
        var leftover = StageBackup(1700259200, "qemu-1700000000");

        if (byPrune)
        {
            var keepTwo = new Dictionary<string, long> { ["keep-last"] = 2 };
            await _store.PruneAsync(keepTwo, 100, GuestType.Qemu, dryRun: false, (_, message) => Log(message), default);
            Assert.DoesNotContain(_log, l => l.Contains("in progress", StringComparison.Ordinal));
        }
        else
        {
            await _store.DeleteAsync(full.Volume, default);
        }

        Assert.False(Directory.Exists(leftover));
        Assert.False(Directory.Exists(full.Directory));
        Assert.Equal([first.Volume, second.Volume], _store.ListBackups(100).Select(b => b.Volume));
        await AssertReadsAsAsync(first, firstBefore);
    }

    [Fact]
    public async Task A_base_two_backups_are_layered_on_is_refused_and_nothing_changes()
    {
        var full = await _storage.AddVmWithImageAsync(100, 1700000000, null, "write -P 1 0 1M");
        await _storage.AddVmWithImageAsync(100, 1700086400, "1700000000", "write -P 2 0 64K");
        await _storage.AddVmWithImageAsync(100, 1700172800, "1700000000", "write -P 3 0 64K");

        await AssertDeleteRefusedAsync(full, ErrorCode.IoError, "is the base of 'backup/100/qemu-1700086400' and 'backup/100/qemu-1700172800'");
    }

    [Fact]
    public async Task A_merge_cut_short_after_the_image_moved_is_hidden_and_finished_by_the_next_delete()
    {
        var (full, first, second) = await ChainAsync();
        var firstBefore = await ContentOfAsync(first);
        var secondBefore = await ContentOfAsync(second);
        // What a crash leaves between the rename of the merged image and the update of the newer manifest.
        MarkMerging(full);
        await QemuImg.CommitAsync([Image(full), Image(first)], default);
        File.Move(Image(full), Image(first), overwrite: true);

        Assert.DoesNotContain(_store.ListBackups(100), b => b.Volume == full.Volume);
        var hidden = Assert.Throws<DirBackupException>(() => _store.ReadManifest(full.Volume));
        Assert.Equal(ErrorCode.NotFound, hidden.Code);
        Assert.Contains("is being deleted", hidden.Message, StringComparison.Ordinal);
        var restore = Assert.Throws<DirBackupException>(() => ChainBuilder.Build(_store, first.Volume, Device));
        Assert.EndsWith("(the chain runs through 'backup/100/qemu-1700000000', whose deletion was cut short; 'pvesm free test:backup/100/qemu-1700000000' finishes it, then try again)", restore.Message, StringComparison.Ordinal);

        await _store.DeleteAsync(full.Volume, default);

        Assert.False(Directory.Exists(full.Directory));
        Assert.Null(ParentOf(first));
        await AssertReadsAsAsync(first, firstBefore);
        await AssertReadsAsAsync(second, secondBefore);
    }

    [Fact]
    public async Task A_merge_cut_short_during_the_commit_is_finished_by_a_prune()
    {
        var (full, first, second) = await ChainAsync();
        var firstBefore = await ContentOfAsync(first);
        // What a crash leaves after the commit (or part of it) and before the rename: the older image already
        // holds the newer one's changes, and the newer chain still reads the same.
        MarkMerging(full);
        await QemuImg.CommitAsync([Image(full), Image(first)], default);
        await AssertReadsAsAsync(first, firstBefore);

        var keepAll = new Dictionary<string, long> { ["keep-all"] = 1 };
        await _store.PruneAsync(keepAll, 100, GuestType.Qemu, dryRun: false, (_, message) => Log(message), default);

        Assert.False(Directory.Exists(full.Directory));
        Assert.Null(ParentOf(first));
        Assert.Equal("qemu-1700086400", ParentOf(second));
        await AssertReadsAsAsync(first, firstBefore);
        Assert.Equal("finishing the interrupted removal of backup 'test:backup/100/qemu-1700000000'", _log[0]);
    }

    [Fact]
    public async Task A_base_of_a_backup_whose_own_merge_was_cut_short_is_refused_until_that_one_is_finished()
    {
        var (full, first, second) = await ChainAsync();
        var secondBefore = await ContentOfAsync(second);
        MarkMerging(first);

        await AssertDeleteRefusedAsync(full, ErrorCode.HasDependents, "'backup/100/qemu-1700086400', which is based on it, is still being merged away");

        await _store.DeleteAsync(first.Volume, default);
        await _store.DeleteAsync(full.Volume, default);
        Assert.Equal([second.Volume], _store.ListBackups(100).Select(b => b.Volume));
        Assert.Null(ParentOf(second));
        await AssertReadsAsAsync(second, secondBefore);
    }

    [Fact]
    public async Task Prune_removes_a_chain_oldest_first_each_merge_carrying_one_backup_and_the_kept_one_reads_as_before()
    {
        var chain = await ChainAsync();
        var last = await _storage.AddVmWithImageAsync(100, 1700259200, "1700172800", "write -P 4 8M 64K");
        var lastBefore = await ContentOfAsync(last);
        var keepLast = new Dictionary<string, long> { ["keep-last"] = 1 };

        var result = await _store.PruneAsync(keepLast, 100, null, dryRun: false, (_, message) => Log(message), default);

        Assert.Equal(3, result.Count(r => r.Mark == "remove"));
        Assert.All([chain.Full, chain.First, chain.Second], b => Assert.False(Directory.Exists(b.Directory)));
        Assert.Equal([last.Volume], _store.ListBackups(100).Select(b => b.Volume));
        Assert.Null(ParentOf(last));
        await AssertReadsAsAsync(last, lastBefore);
        Assert.Equal([
            "removing backup 'test:backup/100/qemu-1700000000'",
            "merging 'test:backup/100/qemu-1700000000' into 'test:backup/100/qemu-1700086400' (drive-scsi0)",
            "removing backup 'test:backup/100/qemu-1700086400'",
            "merging 'test:backup/100/qemu-1700086400' into 'test:backup/100/qemu-1700172800' (drive-scsi0)",
            "removing backup 'test:backup/100/qemu-1700172800'",
            "merging 'test:backup/100/qemu-1700172800' into 'test:backup/100/qemu-1700259200' (drive-scsi0)"], _log);
    }

    [Fact]
    public async Task A_prune_that_finds_a_backup_already_removed_by_another_node_goes_on_and_succeeds()
    {
        var chain = await ChainAsync();
        var secondBefore = await ContentOfAsync(chain.Second);
        var otherNode = new BackupStore(new StorageConfig("test", _storage.Root), new StoreSettings());
        var keepLast = new Dictionary<string, long> { ["keep-last"] = 1 };

        // The other node's prune removes the full backup between this prune's listing and its own removal of it.
        var result = await _store.PruneAsync(keepLast, 100, null, dryRun: false, async (_, message) =>
        {
            await Log(message);
            if (message == "removing backup 'test:backup/100/qemu-1700000000'")
            {
                await otherNode.DeleteAsync(chain.Full.Volume, default);
            }
        }, default);

        Assert.Equal(2, result.Count(r => r.Mark == "remove"));
        Assert.Equal([chain.Second.Volume], _store.ListBackups(100).Select(b => b.Volume));
        await AssertReadsAsAsync(chain.Second, secondBefore);
        Assert.Equal([
            "removing backup 'test:backup/100/qemu-1700000000'",
            "backup 'test:backup/100/qemu-1700000000' was already removed",
            "removing backup 'test:backup/100/qemu-1700086400'",
            "merging 'test:backup/100/qemu-1700086400' into 'test:backup/100/qemu-1700172800' (drive-scsi0)"], _log);
    }

    private void MarkMerging(PreparedBackup backup)
    {
        var manifest = _store.ReadManifest(backup.Volume);
        manifest.Merging = true;
        _store.WriteManifest(backup.Volume, manifest);
    }
}
