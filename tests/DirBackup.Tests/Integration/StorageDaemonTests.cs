using DirBackup.Errors;
using DirBackup.Nbd;
using DirBackup.Qemu;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Integration;

/// <summary>The backup target: a real qemu-storage-daemon serving one qcow2 image on a private socket.</summary>
public sealed class StorageDaemonTests : IDisposable
{
    private readonly TempDir _dir = new("dirbackup-qsd");

    [Fact]
    public async Task An_image_is_served_writable_and_flushed_when_stopped()
    {
        var (image, target) = await ServeNewImageAsync(8 << 20);
        await using (target)
        {
            using (var client = NbdClient.Connect(target.SocketPath, StorageDaemon.ExportName))
            {
                Assert.Equal(8 << 20, client.Size);
                client.Write(Enumerable.Repeat((byte)0x5a, 65536).ToArray(), 1 << 20);
            }
            await target.StopAsync();
        }
        var check = await ChildProcess.RunAsync("qemu-io", ["-f", "qcow2", "-r", "-c", "read -P 0x5a 1M 64k", image], CancellationToken.None);
        Assert.DoesNotContain("verification failed", check);
        Assert.False(File.Exists(target.SocketPath));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Space_reserved_ahead_of_a_backup_s_writes_is_given_back_when_the_target_stops(bool scatteredWrites)
    {
        var (image, target) = await ServeNewImageAsync(256 << 20, scatteredWrites);
        await using (target)
        {
            using (var client = NbdClient.Connect(target.SocketPath, StorageDaemon.ExportName))
            {
                client.Write(Enumerable.Repeat((byte)0x5a, 65536).ToArray(), 32 << 20);
                client.Flush();
            }
            Assert.True(new FileInfo(image).Length > 100 << 20, $"no space reserved ahead: the image file has {new FileInfo(image).Length} bytes");
            await target.StopAsync();
        }
        var check = await ChildProcess.RunAsync(QemuImg.Tool, ["check", "--output=json", "-f", "qcow2", image], CancellationToken.None);
        using var report = System.Text.Json.JsonDocument.Parse(check);
        Assert.Equal(report.RootElement.GetProperty("image-end-offset").GetInt64(), new FileInfo(image).Length);
    }

    [Fact]
    public async Task A_writer_s_connection_queues_a_whole_work_unit_in_the_kernel()
    {
        var (_, target) = await ServeNewImageAsync(8 << 20);
        await using (target)
        {
            using var client = NbdClient.Connect(target.SocketPath, StorageDaemon.ExportName);
            int before = client.SendQueueSize;
            client.EnlargeSendQueue(DirBackup.Backup.CopyPlan.ChunkSize);
            Assert.True(client.SendQueueSize >= DirBackup.Backup.CopyPlan.ChunkSize, $"send queue {before} -> {client.SendQueueSize} bytes");
            client.Write(Enumerable.Repeat((byte)0x33, DirBackup.Backup.CopyPlan.ChunkSize).ToArray(), 0);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Only_a_full_backup_s_target_asks_for_huge_pages_for_the_heap_it_receives_writes_into(bool scatteredWrites)
    {
        if (Smaps.TransparentHugePageMode() != "madvise")
        {
            return; // glibc asks only where the kernel waits to be asked (Debian's default): "always" needs no asking, "never" refuses
        }
        var (_, target) = await ServeNewImageAsync(64 << 20, scatteredWrites);
        await using (target)
        {
            using var client = NbdClient.Connect(target.SocketPath, StorageDaemon.ExportName);
            var megabyte = Enumerable.Repeat((byte)0x5a, 1 << 20).ToArray();
            for (int i = 0; i < 16; i++)
            {
                client.Write(megabyte, (long)i << 20);
            }
            // glibc advises the whole huge pages the heap grows by; a part short of one stays unadvised.
            var heap = Smaps.Read(File.ReadAllText(target.SocketPath + ".pid").Trim()).Where(m => m.Name == "[heap]").ToList();
            Assert.NotEmpty(heap);
            Assert.True(heap.Any(m => m.HugePagesAdvised) == !scatteredWrites, $"scattered writes {scatteredWrites}, the target's heap: {string.Join(", ", heap)}");
        }
    }

    [Fact]
    public async Task A_missing_image_is_refused_in_one_line_that_names_it()
    {
        var missing = _dir.Combine("gone.qcow2");
        var e = await Assert.ThrowsAsync<DirBackupException>(() => StorageDaemon.ServeQcow2Async(missing, 8 << 20, _dir.Combine("run"), scatteredWrites: true, CancellationToken.None));
        Assert.Equal(ErrorCode.IoError, e.Code);
        Assert.Contains(missing, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Empty(Directory.GetFiles(_dir.Combine("run")));
    }

    [Fact]
    public async Task A_daemon_that_cannot_listen_fails_with_its_own_reason()
    {
        // A socket path longer than a Unix socket address holds: QEMU exits before it listens.
        var image = _dir.Combine("disk.qcow2");
        await QemuImg.CreateAsync(image, 8 << 20, null, CancellationToken.None);
        var e = await Assert.ThrowsAsync<DirBackupException>(() => StorageDaemon.ServeQcow2Async(image, 8 << 20, _dir.Combine(new string('r', 120)), scatteredWrites: false, CancellationToken.None));
        Assert.Equal(ErrorCode.IoError, e.Code);
        Assert.StartsWith($"{StorageDaemon.Tool} exited: ", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    /// <summary>A fresh qcow2 of <paramref name="size"/> bytes, served as a full backup's target or an incremental's.</summary>
    private async Task<(string Image, StorageDaemon Target)> ServeNewImageAsync(long size, bool scatteredWrites = false)
    {
        var image = _dir.Combine("disk.qcow2");
        await QemuImg.CreateAsync(image, size, null, CancellationToken.None);
        return (image, await StorageDaemon.ServeQcow2Async(image, size, _dir.Combine("run"), scatteredWrites, CancellationToken.None));
    }

    public void Dispose() => _dir.Dispose();
}
