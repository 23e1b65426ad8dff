using DirBackup.Backup;
using DirBackup.Store;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Unit;

public sealed class IncrementalRecordTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly StorageBuilder _storage;
    private readonly BackupStore _store;

    public IncrementalRecordTests()
    {
        _storage = new StorageBuilder(_dir.Combine("store"));
        _store = new BackupStore(new StorageConfig("test", _storage.Root), new StoreSettings());
    }

    public void Dispose() => _dir.Dispose();

    private IncrementalRecord RecordFor(string device, string backup, long size)
    {
        Directory.CreateDirectory(_store.GuestDir(100));
        var record = new IncrementalRecord();
        record.Devices[device] = new IncrementalDevice { Backup = backup, Size = size };
        record.Write(_store, 100);
        return IncrementalRecord.Read(_store, 100);
    }

    [Fact]
    public async Task A_device_whose_backup_exists_with_the_same_size_has_a_parent()
    {
        await _storage.AddVmWithImageAsync(100, 1700000000);
        var record = RecordFor("drive-scsi0", "qemu-1700000000", 4L << 30);
        Assert.Equal("qemu-1700000000", record.Choose(_store, 100, "drive-scsi0", 4L << 30).Parent);
    }

    [Theory]
    [InlineData(IncrementalRecord.MaxChainLength - 1, true)]
    [InlineData(IncrementalRecord.MaxChainLength, false)]
    public async Task A_device_whose_chain_holds_the_most_backups_gets_a_full_backup_and_one_short_of_it_an_incremental(int length, bool incremental)
    {
        string? parent = null;
        long time = 1700000000;
        for (int i = 0; i < length; i++, time += 3600)
        {
            await _storage.AddVmWithImageAsync(100, time, parent);
            parent = time.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }
        var record = RecordFor("drive-scsi0", $"qemu-{parent}", 4L << 30);

        var choice = record.Choose(_store, 100, "drive-scsi0", 4L << 30);

        Assert.Equal(incremental ? $"qemu-{parent}" : null, choice.Parent);
        Assert.Equal(incremental ? null : $"qemu-{parent} ends a chain of {length} backups, and a chain holds at most {IncrementalRecord.MaxChainLength}; this full backup starts a new one", choice.WhyFull);
    }

    [Fact]
    public async Task A_device_whose_chain_lost_a_layer_or_holds_a_tampered_header_gets_a_full_backup_that_says_why()
    {
        await _storage.AddVmWithImageAsync(100, 1700000000);
        var middle = await _storage.AddVmWithImageAsync(100, 1700003600, "1700000000");
        await _storage.AddVmWithImageAsync(100, 1700007200, "1700003600");
        var record = RecordFor("drive-scsi0", "qemu-1700007200", 4L << 30);
        string image = Path.Combine(middle.Directory, "drive-scsi0.qcow2");

        File.Move(image, image + ".away");
        var lost = record.Choose(_store, 100, "drive-scsi0", 4L << 30);
        File.Move(image + ".away", image);
        await SourceDisk.Run("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", "/etc/hostname", image);
        var tampered = record.Choose(_store, 100, "drive-scsi0", 4L << 30);

        Assert.Null(lost.Parent);
        Assert.Equal($"the chain below qemu-1700007200 cannot carry another backup: backup/100/qemu-1700003600: image '{image}' is missing", lost.WhyFull);
        Assert.Null(tampered.Parent);
        Assert.StartsWith("the chain below qemu-1700007200 cannot carry another backup: backup/100/qemu-1700003600: the header of ", tampered.WhyFull, StringComparison.Ordinal);
    }

    [Fact]
    public void A_resized_disk_a_deleted_parent_or_an_unknown_device_has_none()
    {
        _storage.AddVm(100, 1700000000);
        var record = RecordFor("drive-scsi0", "qemu-1700000000", 4L << 30);
        Assert.Null(record.Choose(_store, 100, "drive-scsi0", 8L << 30).Parent);
        Assert.Null(record.Choose(_store, 100, "drive-scsi1", 4L << 30).Parent);
        Directory.Delete(_storage.Backups[0].Directory, recursive: true);
        Assert.Null(record.Choose(_store, 100, "drive-scsi0", 4L << 30).Parent);
    }

    [Fact]
    public void A_record_older_than_the_newest_backup_of_the_device_is_not_trusted()
    {
        _storage.AddVm(100, 1700000000);
        _storage.AddVm(100, 1700000100, parent: "1700000000");
        var record = RecordFor("drive-scsi0", "qemu-1700000000", 4L << 30);
        Assert.Null(record.Choose(_store, 100, "drive-scsi0", 4L << 30).Parent);
    }

    [Fact]
    public async Task Each_reason_for_a_full_backup_is_told()
    {
        await _storage.AddVmWithImageAsync(100, 1700000000);
        var record = RecordFor("drive-scsi0", "qemu-1700000000", 4L << 30);
        Assert.Equal(new ParentChoice("qemu-1700000000", null), record.Choose(_store, 100, "drive-scsi0", 4L << 30));
        Assert.Equal("no earlier backup of this disk on this storage", record.Choose(_store, 100, "drive-scsi1", 4L << 30).WhyFull);
        Assert.Equal("the disk was resized since qemu-1700000000 (4.0 GiB then, 8.0 GiB now)", record.Choose(_store, 100, "drive-scsi0", 8L << 30).WhyFull);

        _storage.AddVm(100, 1700000100, parent: "1700000000");
        Assert.StartsWith("a backup newer than qemu-1700000000", record.Choose(_store, 100, "drive-scsi0", 4L << 30).WhyFull, StringComparison.Ordinal);

        Directory.Delete(_storage.Backups[0].Directory, recursive: true);
        Assert.Equal("qemu-1700000000, which QEMU's bitmap is relative to, is gone", record.Choose(_store, 100, "drive-scsi0", 4L << 30).WhyFull);
        Assert.Equal("the record of incremental backups (incremental.json) is damaged", RecordFor("drive-scsi0", "../../etc", 1024).Choose(_store, 100, "drive-scsi0", 1024).WhyFull);
    }

    [Fact]
    public void A_missing_or_damaged_record_means_every_device_starts_full()
    {
        Assert.Empty(IncrementalRecord.Read(_store, 100).Devices);
        Directory.CreateDirectory(_store.GuestDir(100));
        File.WriteAllText(IncrementalRecord.PathFor(_store, 100), "{ not json");
        Assert.Empty(IncrementalRecord.Read(_store, 100).Devices);
    }

    [Fact]
    public void A_record_naming_something_that_is_not_a_backup_directory_is_ignored()
    {
        var record = RecordFor("drive-scsi0", "../../etc", 1024);
        Assert.Null(record.Choose(_store, 100, "drive-scsi0", 1024).Parent);
    }
}
