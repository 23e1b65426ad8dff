using System.Globalization;
using DirBackup.Backup;
using DirBackup.Qemu;
using DirBackup.Store;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.EndToEnd;

/// <summary>
/// A guest backed up daily under PVE's default retention (keep all) layers every backup on the one before, for ever.
/// QEMU opens such a chain by the backing names in its headers, each relative to the image above it, and the path it
/// builds grows by one "../qemu-&lt;epoch&gt;/" per layer: a little over 200 layers pass PATH_MAX.
/// </summary>
[Collection(PathSocketCollection.Name)]
[Trait("speed", "slow")]
public sealed class LongChainTests(PathSocketDaemon daemon)
{
    private const string Device = "drive-scsi0";
    private const long Size = 8L << 20;
    private const int Layers = 230;

    [Fact]
    public async Task A_backup_on_top_of_a_chain_of_the_most_backups_is_full_starts_a_new_chain_and_equals_the_disk()
    {
        var storage = daemon.NewStorage("longchain");
        string? parent = null;
        long time = 1700000000;
        for (int i = 0; i < Layers; i++, time += 86400)
        {
            await storage.AddVmWithImageAsync(100, time, parent, Size, []);
            parent = time.ToString(CultureInfo.InvariantCulture);
        }
        var store = new BackupStore(new StorageConfig(storage.StoreId, storage.Root), new StoreSettings());
        var record = new IncrementalRecord();
        record.Devices[Device] = new IncrementalDevice { Backup = $"qemu-{parent}", Size = Size };
        record.Write(store, 100);
        var disk = await SourceDisk.CreateAsync(storage.Root + "-vm", Size, "snapshot-access:longchain");
        await disk.WriteAsync("write -P 0x5a 1M 2M");

        await using var access = await disk.OpenBackupAccessAsync(Device);
        var run = await VzdumpVm.RunAsync(daemon.SocketPath, storage, 100, Device, Size, access.SocketPath, disk.Bitmap, time);

        Assert.True(run.ExitCode == 0, $"{run.Output.ToJsonString()}\n{run.Log}");
        Assert.Contains($"{Device}: full backup of 8.0 MiB (bitmap-mode new): qemu-{parent} ends a chain of {IncrementalRecord.MaxChainLength} backups", run.Log, StringComparison.Ordinal);
        var image = Path.Combine(storage.Root, "100", $"qemu-{time}", Device + ".qcow2");
        Assert.Null((await QemuImgInfo.ReadAsync(image)).BackingFile);
        Assert.Null(store.ReadManifest(new VolumeName(100, GuestType.Qemu, time)).Devices.Single().Parent);
        await ChildProcess.RunAsync("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "qcow2", access.FrozenState, image], CancellationToken.None);
    }
}
